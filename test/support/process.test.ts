import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ManagedProcess, pidAlive, processState } from './process.js';
import { waitFor } from './wait-for.js';

const deadlineMs = 3_000;

const gone = (pid: number, what: string): Promise<true> =>
  waitFor(() => !pidAlive(pid), { what, deadlineMs });

const reported = (child: ManagedProcess, pattern: RegExp): Promise<string> =>
  waitFor(() => pattern.exec(child.output())?.[1] ?? false, { what: `${child.name} to print ${pattern}`, deadlineMs });

describe('ManagedProcess', () => {
  it('keeps the last lines of output for error messages', async () => {
    await using child = await ManagedProcess.spawn({
      name: 'chatty',
      command: 'sh',
      args: ['-c', 'for i in $(seq 1 50); do echo line$i >&2; done; echo done >&2; exec sleep 30'],
      outputLines: 10,
    });
    await reported(child, /^(done)$/m);
    const lines = child.output().split('\n');
    expect(lines).toHaveLength(10);
    expect(lines[0]).toBe('line42');
  });

  it('pauses, resumes, and is gone after close()', async () => {
    const child = await ManagedProcess.spawn({ name: 'sleeper', command: 'sleep', args: ['30'] });
    await child.pause();
    expect(processState(child.pid)).toBe('T');
    await child.resume();
    expect(processState(child.pid)).not.toBe('T');
    await child.close();
    await child.close();
    expect(child.running).toBe(false);
    expect(child.exitInfo?.signal).toBe('SIGKILL');
    expect(pidAlive(child.pid)).toBe(false);
  });

  it('kills the whole process group, grandchildren included', async () => {
    const child = await ManagedProcess.spawn({ name: 'forker', command: 'sh', args: ['-c', 'sleep 30 & echo $!; wait'] });
    const grandchild = Number(await reported(child, /^(\d+)$/m));
    expect(pidAlive(grandchild)).toBe(true);
    await child.close();
    await gone(grandchild, 'the grandchild to die with its group');
  });

  it('escalates stop() to SIGKILL when SIGTERM is ignored', async () => {
    await using child = await ManagedProcess.spawn({
      name: 'stubborn',
      command: 'sh',
      args: ['-c', 'trap "" TERM; echo trapped; exec sleep 30'],
    });
    await reported(child, /^(trapped)$/m);
    const exit = await child.stop(100);
    expect(exit.signal).toBe('SIGKILL');
  });

  describe('when the test process dies', () => {
    const processModule = pathToFileURL(new URL('./process.ts', import.meta.url).pathname).href;
    // A stand-in for a test process: starts a child through the harness, then dies as told. Node
    // strips the types itself; the hook maps the harness sources' `./x.js` imports to `./x.ts`
    // (theirs only: the packages they import are built, their `./x.js` files exist).
    const script = `
      import { registerHooks } from 'node:module';
      registerHooks({
        resolve: (specifier, context, next) =>
          next(specifier.startsWith('./') && context.parentURL?.includes('/test/support/') ? specifier.replace(/[.]js$/, '.ts') : specifier, context),
      });
      const { ManagedProcess } = await import(${JSON.stringify(processModule)});
      const child = await ManagedProcess.spawn({ name: 'orphan', command: 'sleep', args: ['30'] });
      process.stdout.write('child=' + child.pid + '\\n');
      if (process.env.DEATH === 'exit') process.exit(0);
      process.kill(process.pid, 'SIGKILL');`;

    async function orphanOf(death: 'exit' | 'SIGKILL', pdeathsig: boolean): Promise<number> {
      await using parent = await ManagedProcess.spawn({
        name: `test process dying by ${death}`,
        command: process.execPath,
        args: ['--input-type=module', '-e', script],
        env: { ...process.env, DEATH: death, BATON_TEST_PDEATHSIG: pdeathsig ? '1' : '0' },
      });
      const pid = Number(await reported(parent, /^child=(\d+)$/m));
      await parent.exited;
      return pid;
    }

    it('the exit hook kills its children on process.exit()', async () => {
      const pid = await orphanOf('exit', false);
      await gone(pid, 'the child of an exited process');
    });

    it('the parent-death signal kills its children on SIGKILL', async () => {
      const pid = await orphanOf('SIGKILL', true);
      await gone(pid, 'the child of a SIGKILLed process');
    });

    it('(control) without the parent-death signal a SIGKILLed parent leaves its child running', async () => {
      const pid = await orphanOf('SIGKILL', false);
      try {
        expect(pidAlive(pid)).toBe(true);
      } finally {
        process.kill(-pid, 'SIGKILL');
      }
      await gone(pid, 'the leftover child');
    });
  });
});
