import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BatonError } from '@baton/core';
import { exitOf, httpText, runCli } from '../support/agent-io.js';
import { AgentProcess, JsonProcess, ManagedProcess, pidAlive, SharedStorage, startProbe, startSimVm, tryLockFrom, waitFor } from '../support/index.js';

/**
 * A lock lives exactly as long as its owner: the agent releases a dead owner's disks promptly, and
 * never while the owner's process can still write to them.
 */
describe('owner liveness', () => {
  /**
   * A VM-like process (`node -e`): registers a connection-bound owner with its own pid, acquires
   * the disk, then drops its connection while it keeps running. With `ignore`, it survives SIGTERM.
   * JsonProcess runs `node <entry> <args>`, so an entry of `-e` runs it inline.
   */
  const OWNER_SCRIPT = `
    const net = require('node:net');
    const [socketPath, uuid, disk, onTerm] = process.argv.slice(1);
    const emit = (e) => process.stdout.write(JSON.stringify({ ...e, at: Date.now() }) + '\\n');
    if (onTerm === 'ignore') process.on('SIGTERM', () => emit({ event: 'sigterm' }));
    setInterval(() => {}, 1000);
    const s = net.connect(socketPath);
    let buf = '';
    const replies = [];
    s.setEncoding('utf8');
    s.on('data', (t) => {
      buf += t;
      for (let i = buf.indexOf('\\n'); i >= 0; i = buf.indexOf('\\n')) { replies.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1); }
      if (replies.length < 2) return;
      if (!replies.every((r) => r.ok)) { emit({ event: 'error', replies }); process.exit(1); }
      // Reported first: the agent may signal this process as soon as the connection is gone.
      emit({ event: 'dropping-connection', lockPath: replies[1].result.grants[0].lockPath });
      s.destroy();
    });
    s.write(JSON.stringify({ v: 1, id: 1, method: 'register', params: { owner: { uuid, name: 'vm-owner', pid: process.pid }, liveness: 'connection' } }) + '\\n');
    s.write(JSON.stringify({ v: 1, id: 2, method: 'acquire', params: { resources: [{ name: disk }] } }) + '\\n');
  `;

  async function registeredClient(agent: AgentProcess, name: string) {
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name } });
    return c;
  }

  /**
   * Another process trying the lock file every 0.2 ms (the lock probe), started while the lock is
   * held: `afterDeathOf` waits for the first time it gets the lock, i.e. the agent's release, and
   * checks that the owner's process was already dead then. The probe is stopped before returning,
   * so it cannot make the next acquire busy.
   */
  async function watchRelease(lockPath: string): Promise<{ afterDeathOf(pid: number, deadlineMs: number): Promise<void> } & AsyncDisposable> {
    const probe = await startProbe(lockPath, ['--op', 'probe', '--interval-us', '200']);
    await probe.event((e) => e.event === 'probing', 'probe started');
    return {
      async afterDeathOf(pid, deadlineMs) {
        try {
          await probe.event((e) => e.event === 'granted', `release of ${lockPath}`, deadlineMs);
          // Checked after the release was seen: alive now means alive when it was released.
          expect(pidAlive(pid)).toBe(false);
        } finally {
          await probe.close();
        }
      },
      [Symbol.asyncDispose]: () => probe.close(),
    };
  }

  it('releases a SIGKILLed sim VM’s disk promptly; another owner then gets it', async () => {
    await using storage = await SharedStorage.create();
    // A long grace period: a dead process must not wait for it.
    await using agent = await AgentProcess.start({ storage, config: { owners: { termGraceMs: 10_000, pidPollMs: 20 } } });
    const disk = storage.image('vm1.img');
    await using vm = await startSimVm(agent, { uuid: randomUUID(), name: 'vm1', disks: [disk] });
    const running = await vm.event((e) => e.event === 'running', 'running');
    const grant = (running.grants as { lockPath: string; token: number }[])[0]!;
    const other = await registeredClient(agent, 'vm1-restarted');
    await expect(other.request('acquire', { resources: [{ name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });

    await using release = await watchRelease(grant.lockPath);
    vm.proc.kill('SIGKILL');
    const started = performance.now();
    await release.afterDeathOf(vm.pid, 3_000);
    expect(performance.now() - started).toBeLessThan(1_500);

    const { grants } = await other.request('acquire', { resources: [{ name: disk }] });
    expect(grants[0]!.lockPath).toBe(grant.lockPath);
    expect(grants[0]!.token).toBeGreaterThan(grant.token);
  });

  describe('a connection-bound owner whose connection drops while its process lives', () => {
    // Long enough for the checks made inside it on a loaded two-core machine.
    const GRACE_MS = 2_000;

    it('is sent SIGTERM; once it has exited, its disk is released', async () => {
      await using storage = await SharedStorage.create();
      await using agent = await AgentProcess.start({ storage, config: { owners: { termGraceMs: GRACE_MS, pidPollMs: 20 } } });
      const disk = storage.image('vm.img');
      await using owner = await JsonProcess.start('owner', '-e', [OWNER_SCRIPT, agent.socketPath, randomUUID(), disk, 'exit']);
      const dropped = await owner.event((e) => e.event === 'dropping-connection', 'connection dropped');
      const lockPath = dropped.lockPath as string;

      await using release = await watchRelease(lockPath);
      await release.afterDeathOf(owner.pid, 5_000);
      // Killed by the SIGTERM, not the SIGKILL that follows the grace period.
      expect(await exitOf(owner.proc)).toEqual({ code: null, signal: 'SIGTERM' });
      // Every signal the agent sent is logged before the owner's release.
      await agent.json.event((e) => typeof e.msg === 'string' && e.msg.startsWith('owner vm-owner is gone'), 'owner gone');
      expect(agent.json.events().filter((e) => e.signal !== undefined).map((e) => e.signal)).toEqual(['SIGTERM']);
      const other = await registeredClient(agent, 'next');
      expect((await other.request('acquire', { resources: [{ name: disk }] })).grants[0]!.lockPath).toBe(lockPath);
    });

    it('is SIGKILLed after owners.termGraceMs if it ignores SIGTERM, and its disk stays locked until it is dead', async () => {
      await using storage = await SharedStorage.create();
      await using agent = await AgentProcess.start({ storage, config: { owners: { termGraceMs: GRACE_MS, pidPollMs: 20 } } });
      const disk = storage.image('vm.img');
      await using owner = await JsonProcess.start('owner', '-e', [OWNER_SCRIPT, agent.socketPath, randomUUID(), disk, 'ignore']);
      const diedAt = owner.proc.exited.then(() => Date.now());
      const dropped = await owner.event((e) => e.event === 'dropping-connection', 'connection dropped');
      const lockPath = dropped.lockPath as string;
      const sigterm = await owner.event((e) => e.event === 'sigterm', 'SIGTERM from the agent');

      // Inside the grace period the process lives, so its disk must stay locked, for the agent's
      // own owners and for any other process.
      const other = await registeredClient(agent, 'next');
      const err = await other.request('acquire', { resources: [{ name: disk }] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BatonError);
      expect((err as BatonError).code).toBe('RESOURCE_BUSY');
      expect(await tryLockFrom(lockPath)).toBe('busy');
      // The checks above ran while the owner lived (still running after them), else they prove nothing.
      expect(owner.proc.running).toBe(true);

      await using release = await watchRelease(lockPath);
      await release.afterDeathOf(owner.pid, GRACE_MS + 5_000);
      expect(await exitOf(owner.proc)).toEqual({ code: null, signal: 'SIGKILL' });
      // Not killed before the grace period was up (less a margin for the SIGTERM's delivery).
      expect((await diedAt) - (sigterm.at as number)).toBeGreaterThanOrEqual(GRACE_MS - 300);
      await agent.json.event((e) => typeof e.msg === 'string' && e.msg.startsWith('owner vm-owner is gone'), 'owner gone');
      expect(agent.json.events().filter((e) => e.signal !== undefined).map((e) => e.signal)).toEqual(['SIGTERM', 'SIGKILL']);
      expect((await other.request('acquire', { resources: [{ name: disk }] })).grants[0]!.lockPath).toBe(lockPath);
    });
  });

  it('keeps a pid-bound owner registered by the CLI after the CLI exits, and releases it promptly when its process dies', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const disk = storage.image('vm.img');
    await using vmProcess = await ManagedProcess.spawn({ name: 'sleep', command: 'sleep', args: ['60'] });
    const observer = await registeredClient(agent, 'observer');
    const { httpPort } = await observer.request('hello');
    const uuid = randomUUID();

    const cli = await runCli(['lock', 'acquire', '--socket', agent.socketPath, '--owner', uuid, '--name', 'hook-vm', '--pid', String(vmProcess.pid), '--json', disk]);
    expect(cli.status, cli.stdout + cli.stderr).toBe(0);
    const grant = (JSON.parse(cli.stdout) as { grants: { lockPath: string; token: number }[] }).grants[0]!;
    // The agent has handled the CLI's connection closing once only the observer's is left.
    await waitFor(async () => (await httpText(`http://127.0.0.1:${httpPort}/metrics`)).body.includes('\nbaton_agent_connections 1\n'), {
      what: 'the CLI connection to be closed on the agent',
      deadlineMs: 5_000,
    });

    const { locks } = await observer.request('locks');
    expect(locks).toContainEqual(expect.objectContaining({ resource: disk, token: grant.token, owner: { uuid, name: 'hook-vm', pid: vmProcess.pid } }));
    expect(await tryLockFrom(grant.lockPath)).toBe('busy');
    await expect(observer.request('acquire', { resources: [{ name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    expect(vmProcess.running).toBe(true);

    await using release = await watchRelease(grant.lockPath);
    vmProcess.kill('SIGTERM');
    const started = performance.now();
    await release.afterDeathOf(vmProcess.pid, 3_000);
    expect(performance.now() - started).toBeLessThan(1_500);
    expect((await observer.request('acquire', { resources: [{ name: disk }] })).grants[0]!.token).toBeGreaterThan(grant.token);
  });
});
