import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AgentClient } from '@baton/agent';
import { asBatonError, type Grant } from '@baton/core';
import { exitOf, runCli, ScratchDir, type CliResult } from '../support/agent-io.js';
import { AgentProcess, CLI_ENTRY, freePort, ManagedProcess, SharedStorage, tryLockFrom, waitFor } from '../support/index.js';

/** `baton` as operators and hooks run it: exit statuses, stable error codes, and parseable output. */
describe('baton CLI', () => {
  /** A pid-bound owner (as a libvirt hook registers one) holding `disk` for a sleeping process. */
  async function holdFor(agent: AgentProcess, vmProcess: ManagedProcess, disk: string): Promise<{ client: AgentClient; uuid: string; grant: Grant }> {
    const client = await agent.client();
    const uuid = randomUUID();
    await client.request('register', { owner: { uuid, name: 'vm-held', pid: vmProcess.pid }, liveness: 'pid' });
    const { grants } = await client.request('acquire', { resources: [{ name: disk }] });
    return { client, uuid, grant: grants[0]! };
  }

  const why = (r: CliResult): string => `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

  describe('baton agent with an invalid configuration', () => {
    const BAD_FILE = '{"lockspaces":[{"name":"BAD","kind":"indirect"}],"http":{"port":"x"}}';
    const FILE_FIELDS = ['lockspaces.0.name', 'lockspaces.0.dir', 'http.port'];
    /** A line of the report: the field, then where its value came from. */
    const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    const named = (field: string, source: string): RegExp => new RegExp(`^\\s+${escape(field)} \\(${escape(source)}\\): `, 'm');

    it('exits with INVALID_CONFIG (status 2), naming every bad field of the file', async () => {
      await using scratch = await ScratchDir.create('cli-config');
      const configPath = join(scratch.path, 'bad.json');
      writeFileSync(configPath, BAD_FILE);
      const r = await runCli(['agent', '--config', configPath]);
      expect(r.status, why(r)).toBe(2);
      expect(r.stderr).toContain('INVALID_CONFIG');
      for (const field of FILE_FIELDS) expect(r.stderr, field).toMatch(named(field, configPath));
    });

    it('names a bad environment override too, beside every bad field of the file', async () => {
      await using scratch = await ScratchDir.create('cli-config');
      const configPath = join(scratch.path, 'bad.json');
      writeFileSync(configPath, BAD_FILE);
      const r = await runCli(['agent', '--config', configPath], { env: { BATON_HTTP_PORT: 'notjson' } });
      expect(r.status, why(r)).toBe(2);
      expect(r.stderr).toContain('INVALID_CONFIG');
      expect(r.stderr).toMatch(named('http.port', 'BATON_HTTP_PORT'));
      expect(r.stderr).toContain('notjson');
      // The operator fixes everything in one pass only if every bad field is named at once.
      for (const field of ['lockspaces.0.name', 'lockspaces.0.dir']) expect(r.stderr, field).toMatch(named(field, configPath));
    });

    it('refuses socket paths Linux cannot bind: the agent’s, and the sim VMs’ under a long state directory', async () => {
      await using scratch = await ScratchDir.create('cli-config');
      const long = join(scratch.path, 'x'.repeat(100));
      const configPath = join(scratch.path, 'long.json');
      const lockspaces = [{ name: 'images', kind: 'indirect', dir: scratch.path }];
      writeFileSync(configPath, JSON.stringify({ socket: { path: join(long, 'agent.sock') }, stateDir: long, hypervisor: { driver: 'sim' }, lockspaces }));
      const r = await runCli(['agent', '--config', configPath]);
      expect(r.status, why(r)).toBe(2);
      expect(r.stderr).toContain('INVALID_CONFIG');
      expect(r.stderr).toMatch(new RegExp(`${named('socket.path', configPath).source}.*at most 107`, 'm'));
      expect(r.stderr).toMatch(new RegExp(`${named('stateDir', configPath).source}too long for the sim VMs’ sockets.*incoming\\.sock is \\d+ bytes`, 'm'));
      expect(existsSync(long)).toBe(false);
    });

    it('stops at once on SIGTERM while it waits for etcd at start: it holds nothing yet', async () => {
      await using scratch = await ScratchDir.create('cli-config');
      const configPath = join(scratch.path, 'no-etcd.json');
      const lockspaces = [{ name: 'images', kind: 'indirect', dir: scratch.path }];
      const etcd = { endpoints: [`http://127.0.0.1:${await freePort()}`], ttlSeconds: 30 };
      writeFileSync(configPath, JSON.stringify({ socket: { path: join(scratch.path, 'agent.sock') }, stateDir: join(scratch.path, 'state'), lockspaces, etcd }));
      const agent = spawn(process.execPath, [CLI_ENTRY, 'agent', '--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      agent.stdout.setEncoding('utf8').on('data', (t: string) => (out += t));
      agent.stderr.resume();
      const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
      try {
        // It would keep trying for three TTLs (90 s here) before giving up.
        await waitFor(() => out.includes('cannot reach etcd yet'), { what: 'the agent waiting for etcd', deadlineMs: 20_000, intervalMs: 20 });
        agent.kill('SIGTERM');
        expect(await waitFor(() => exited, { what: 'the agent to exit', deadlineMs: 5_000 })).toBe(128 + 15);
        expect(existsSync(join(scratch.path, 'agent.sock'))).toBe(false);
      } finally {
        agent.kill('SIGKILL');
      }
    });

    it('calls an HTTP port in use, or an etcd password file it cannot read, INVALID_CONFIG (status 2) naming the field', async () => {
      await using scratch = await ScratchDir.create('cli-config');
      const taken = createServer();
      await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
      try {
        const port = (taken.address() as { port: number }).port;
        const lockspaces = [{ name: 'images', kind: 'indirect', dir: scratch.path }];
        const cases: [string, object, string][] = [
          ['port in use', { http: { host: '127.0.0.1', port } }, `http: cannot listen on 127.0.0.1:${port} (EADDRINUSE)`],
          [
            'password file missing',
            { etcd: { endpoints: ['http://127.0.0.1:1'], auth: { username: 'u', passwordFile: join(scratch.path, 'missing') } } },
            `etcd.auth.passwordFile ${join(scratch.path, 'missing')} cannot be read (ENOENT)`,
          ],
        ];
        for (const [what, extra, message] of cases) {
          const configPath = join(scratch.path, 'c.json');
          writeFileSync(configPath, JSON.stringify({ socket: { path: join(scratch.path, 'agent.sock') }, stateDir: join(scratch.path, 'state'), lockspaces, ...extra }));
          const r = await runCli(['agent', '--config', configPath]);
          expect(r.status, `${what}: ${why(r)}`).toBe(2);
          expect(r.stderr, what).toContain(`INVALID_CONFIG: ${message}`);
        }
      } finally {
        taken.close();
      }
    });

    it('refuses a state directory that cannot be made, at once (one under /proc made Node’s own mkdir spin for ever)', async () => {
      await using scratch = await ScratchDir.create('cli-config');
      const configPath = join(scratch.path, 'proc.json');
      const lockspaces = [{ name: 'images', kind: 'indirect', dir: scratch.path }];
      writeFileSync(configPath, JSON.stringify({ socket: { path: join(scratch.path, 'agent.sock') }, stateDir: `/proc/${process.pid}/baton`, lockspaces }));
      const r = await runCli(['agent', '--config', configPath]);
      expect(r.status, why(r)).toBe(2);
      expect(r.stderr).toContain(`INVALID_CONFIG: stateDir: /proc/${process.pid}/baton cannot be made a directory (ENOENT)`);
      expect(existsSync(join(scratch.path, 'agent.sock'))).toBe(false);
    });
  });

  it('lists held locks as a table and as JSON (baton locks)', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    await using vmProcess = await ManagedProcess.spawn({ name: 'vm process', command: 'sleep', args: ['60'] });
    const disk = storage.image('vm.img');
    const { uuid, grant } = await holdFor(agent, vmProcess, disk);

    const table = await runCli(['locks', '--socket', agent.socketPath]);
    expect(table.status, why(table)).toBe(0);
    const [header, ...rows] = table.stdout.trimEnd().split('\n').map((l) => l.trim().split(/\s{2,}/));
    expect(header).toEqual(['RESOURCE', 'LOCKSPACE', 'MODE', 'OWNER', 'PID', 'TOKEN', 'SINCE', 'PATH']);
    expect(rows).toEqual([[disk, 'images', 'exclusive', 'vm-held', String(vmProcess.pid), String(grant.token), grant.since, grant.lockPath]]);

    const json = await runCli(['locks', '--socket', agent.socketPath, '--json']);
    expect(json.status, why(json)).toBe(0);
    const doc = JSON.parse(json.stdout) as { host: string; locks: unknown[] };
    expect(doc.host).toBe('host-a');
    expect(doc.locks).toEqual([{ ...grant, owner: { uuid, name: 'vm-held', pid: vmProcess.pid } }]);
  });

  it('exits 3 with RESOURCE_BUSY when `baton lock acquire` meets a held disk, in text and JSON mode', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    await using holderProcess = await ManagedProcess.spawn({ name: 'holder vm', command: 'sleep', args: ['60'] });
    await using otherProcess = await ManagedProcess.spawn({ name: 'other vm', command: 'sleep', args: ['60'] });
    const disk = storage.image('vm.img');
    const held = await holdFor(agent, holderProcess, disk);
    const acquire = ['lock', 'acquire', '--socket', agent.socketPath, '--owner', randomUUID(), '--name', 'other', '--pid', String(otherProcess.pid), disk];

    const text = await runCli(acquire);
    expect(text.status, why(text)).toBe(3);
    expect(text.stderr).toMatch(/^error RESOURCE_BUSY: /m);
    expect(text.stdout).toBe('');

    const json = await runCli([...acquire, '--json']);
    expect(json.status, why(json)).toBe(3);
    expect(JSON.parse(json.stdout)).toEqual({ error: expect.objectContaining({ code: 'RESOURCE_BUSY', message: expect.any(String) }) });

    // The refused attempts took nothing from the holder.
    expect(await tryLockFrom(held.grant.lockPath)).toBe('busy');
    expect((await held.client.request('inquire')).locks).toEqual([held.grant]);
  });

  it('releases, from a later invocation, what `baton lock acquire` took for a process (a hook’s start and stop)', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    await using vmProcess = await ManagedProcess.spawn({ name: 'vm process', command: 'sleep', args: ['60'] });
    const disk = storage.image('vm.img');
    const owner = ['--socket', agent.socketPath, '--owner', randomUUID(), '--name', 'hooked', '--json'];

    const acquired = await runCli(['lock', 'acquire', ...owner, '--pid', String(vmProcess.pid), disk]);
    expect(acquired.status, why(acquired)).toBe(0);
    const grant = (JSON.parse(acquired.stdout) as { grants: Grant[] }).grants[0]!;
    expect(grant).toMatchObject({ resource: disk, mode: 'exclusive' });
    expect(await tryLockFrom(grant.lockPath)).toBe('busy');

    // The second invocation attaches to the pid-bound owner by uuid and name.
    const released = await runCli(['lock', 'release', ...owner, disk]);
    expect(released.status, why(released)).toBe(0);
    expect(JSON.parse(released.stdout)).toEqual({ grants: [grant] });
    expect(await tryLockFrom(grant.lockPath)).toBe('granted');
    expect(vmProcess.running).toBe(true);

    // An owner this host does not know (a mistyped uuid): refused by name, and registered nowhere.
    const stranger = randomUUID();
    const unknown = await runCli(['lock', 'release', '--socket', agent.socketPath, '--owner', stranger, '--name', 'hooked', disk]);
    expect(unknown.status, why(unknown)).toBe(2);
    expect(unknown.stderr).toContain(`error NOT_REGISTERED: owner ${stranger} is not registered on this host`);
    const observer = await agent.client();
    expect(await observer.request('inquire', { owner: stranger }).catch(asBatonError)).toMatchObject({ code: 'NOT_REGISTERED' });
  });

  it('prints an owner’s lock state document (baton lock inquire --json)', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    await using vmProcess = await ManagedProcess.spawn({ name: 'vm process', command: 'sleep', args: ['60'] });
    const { uuid, grant } = await holdFor(agent, vmProcess, storage.image('vm.img'));

    const r = await runCli(['lock', 'inquire', '--socket', agent.socketPath, '--owner', uuid, '--json']);
    expect(r.status, why(r)).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      kind: 'baton.lock-state',
      version: 1,
      host: 'host-a',
      owner: { uuid, name: 'vm-held', pid: vmProcess.pid },
      liveness: 'pid',
      locks: [grant],
    });

    // An owner this host does not know: its stable code and exit status, not a crash.
    const unknown = await runCli(['lock', 'inquire', '--socket', agent.socketPath, '--owner', randomUUID(), '--json']);
    expect(unknown.status, why(unknown)).toBe(2);
    expect(JSON.parse(unknown.stdout)).toMatchObject({ error: { code: 'NOT_REGISTERED' } });
  });

  it('refuses SIGTERM and `agent stop` while locks are held (LOCKS_HELD), and stops with --release-all', async () => {
    await using storage = await SharedStorage.create();
    // A direct lockspace locks the image itself, so "free again" is a lock on the image.
    await using agent = await AgentProcess.start({ storage, config: { lockspaces: [{ name: 'direct', kind: 'direct', roots: [storage.imagesDir] }] } });
    await using vmProcess = await ManagedProcess.spawn({ name: 'vm process', command: 'sleep', args: ['60'] });
    const disk = storage.image('vm.img');
    const held = await holdFor(agent, vmProcess, disk);

    process.kill(agent.pid, 'SIGTERM');
    const refusal = await agent.json.event((e) => e.code === 'LOCKS_HELD', 'SIGTERM refused');
    expect(refusal).toMatchObject({ signal: 'SIGTERM', held: 1 });
    // Still running and serving, the lock still held.
    const after = await agent.client();
    expect((await after.request('hello')).pid).toBe(agent.pid);
    expect((await after.request('locks')).locks).toHaveLength(1);
    expect(agent.json.proc.running).toBe(true);

    const stop = await runCli(['agent', 'stop', '--socket', agent.socketPath]);
    expect(stop.status, why(stop)).toBe(7);
    expect(stop.stderr).toMatch(/^error LOCKS_HELD: /m);
    const stopJson = await runCli(['agent', 'stop', '--socket', agent.socketPath, '--json']);
    expect(stopJson.status, why(stopJson)).toBe(7);
    expect(JSON.parse(stopJson.stdout)).toMatchObject({ error: { code: 'LOCKS_HELD' } });
    expect(await tryLockFrom(disk)).toBe('busy');
    expect((await after.request('inquire', { owner: held.uuid })).locks).toEqual([held.grant]);

    const releaseAll = await runCli(['agent', 'stop', '--socket', agent.socketPath, '--release-all']);
    expect(releaseAll.status, why(releaseAll)).toBe(0);
    expect(releaseAll.stdout).toContain('1 lock(s) released');
    expect(await exitOf(agent.json.proc)).toEqual({ code: 0, signal: null });
    expect(await tryLockFrom(disk)).toBe('granted');
    expect(existsSync(agent.socketPath)).toBe(false);
  });

  it('stops on SIGTERM when no lock is held: exit 0, socket file removed', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const c = await agent.client();
    // An owner that holds nothing does not keep the agent up.
    await c.request('register', { owner: { uuid: randomUUID(), name: 'idle' } });
    expect(existsSync(agent.socketPath)).toBe(true);

    process.kill(agent.pid, 'SIGTERM');
    expect(await exitOf(agent.json.proc)).toEqual({ code: 0, signal: null });
    expect(existsSync(agent.socketPath)).toBe(false);
    // Any refusal would have been logged before the stop.
    await agent.json.event((e) => e.msg === 'agent stopped', 'agent stopped');
    expect(agent.logsWithCode('LOCKS_HELD')).toEqual([]);
  });
});
