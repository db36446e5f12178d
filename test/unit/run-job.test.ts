import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/index.js';

const RUN_JOB = new URL('../../scripts/run-job.mjs', import.meta.url).href;

/**
 * A job that takes its time to stop, as the demo does: it reports each SIGINT it gets and, on
 * SIGTERM, cleans up for a moment before it exits.
 */
const JOB = `
let ints = 0;
process.on('SIGINT', () => ints++);
process.on('SIGTERM', () => {
  console.log('stopping');
  setTimeout(() => { console.log('stopped; SIGINTs seen: ' + ints); process.exit(143); }, 300);
});
console.log('ready');
setInterval(() => {}, 1000);
`;

/** What npm runs (scripts/bootstrap.mjs ends in runJob), with the job above. */
function startRunner() {
  const runner = spawn(
    process.execPath,
    ['--input-type=module', '-e', `import { runJob } from '${RUN_JOB}'; process.exitCode = await runJob(process.execPath, ['-e', ${JSON.stringify(JOB)}], { cwd: process.cwd(), env: process.env });`],
    { stdio: ['ignore', 'pipe', 'inherit'], detached: true },
  );
  let stdout = '';
  runner.stdout.setEncoding('utf8').on('data', (t: string) => (stdout += t));
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => runner.once('close', (code, signal) => resolve({ code, signal })));
  return { runner, closed, stdout: () => stdout };
}

describe('the npm scripts’ job runner (scripts/run-job.mjs)', () => {
  it('stays until the job has stopped: SIGTERM is passed on once, SIGINT is left to the terminal (it reaches the job itself)', async () => {
    const { runner, closed, stdout } = startRunner();
    try {
      await waitFor(() => stdout().includes('ready'), { what: 'the job to start', deadlineMs: 10_000, intervalMs: 5 });
      // npm forwards both to its child, the runner; only SIGTERM is meant for the job from there.
      runner.kill('SIGINT');
      runner.kill('SIGTERM');
      const end = await waitFor(() => closed, { what: 'the runner to exit', deadlineMs: 10_000 });
      // The runner ended with the job's status, after the job had finished stopping.
      expect(end).toEqual({ code: 143, signal: null });
      expect(stdout()).toContain('stopped; SIGINTs seen: 0');
    } finally {
      // The job too, if the test failed before it ended: it is in the runner's process group.
      try {
        process.kill(-runner.pid!, 'SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    }
  });
});
