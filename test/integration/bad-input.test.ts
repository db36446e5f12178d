import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AgentClient, AgentConfigInput } from '@baton/agent';
import { MAX_LINE_BYTES, type Grant } from '@baton/core';
import { RawAgentSocket, ScratchDir } from '../support/agent-io.js';
import { AgentProcess, SharedStorage, tryLockFrom } from '../support/index.js';

/**
 * Whatever a client sends, the agent answers with the documented error code, keeps serving the
 * connection, and never lets the bad request touch a lock it already holds for someone else.
 */
describe('bad input on the agent socket', () => {
  interface Held {
    holder: AgentClient;
    uuid: string;
    grant: Grant;
  }

  /** Another owner's lock, on its own connection: the thing a bad request must not disturb. */
  async function holdDisk(agent: AgentProcess, disk: string): Promise<Held> {
    const holder = await agent.client();
    const uuid = randomUUID();
    await holder.request('register', { owner: { uuid, name: 'holder' } });
    const { grants } = await holder.request('acquire', { resources: [{ name: disk }] });
    return { holder, uuid, grant: grants[0]! };
  }

  /** Held at the fcntl level (another process is refused) and still listed as the holder's. */
  async function expectUnaffected(agent: AgentProcess, held: Held): Promise<void> {
    expect(await tryLockFrom(held.grant.lockPath)).toBe('busy');
    const observer = await agent.client();
    const { locks } = await observer.request('locks');
    expect(locks).toContainEqual(expect.objectContaining({ resource: held.grant.resource, token: held.grant.token, owner: expect.objectContaining({ uuid: held.uuid }) }));
  }

  async function expectHello(raw: RawAgentSocket, id: number): Promise<void> {
    const reply = await raw.call('hello', {}, { id });
    expect(reply).toMatchObject({ id, ok: true, result: { protocol: 1 } });
  }

  function errorOf(code: string, id: number | null): Record<string, unknown> {
    return { v: 1, id, ok: false, error: expect.objectContaining({ code, message: expect.any(String) }) };
  }

  it('answers a malformed JSON line with INVALID_REQUEST (id null), once, and keeps serving the connection', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    await using raw = await RawAgentSocket.connect(agent.socketPath);

    raw.write('{not json\n');
    expect(await raw.next()).toEqual(errorOf('INVALID_REQUEST', null));
    // Exactly one reply per bad line: the next reply is the hello's, matched by its id.
    await expectHello(raw, 7);

    // An envelope that is JSON but not a request (no id, no method) is refused the same way.
    raw.write(JSON.stringify({ v: 1, params: {} }) + '\n');
    expect(await raw.next()).toEqual(errorOf('INVALID_REQUEST', null));
    await expectHello(raw, 8);
    await expectUnaffected(agent, held);
  });

  it('refuses an unknown method (UNKNOWN_METHOD) and protocol version 2 (UNSUPPORTED_VERSION) by request id, doing nothing', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    const free = storage.image('free.img');
    await using raw = await RawAgentSocket.connect(agent.socketPath);
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'client' } }, { id: 1 })).toMatchObject({ id: 1, ok: true });

    expect(await raw.call('steal', { resources: [{ name: held.grant.resource }] }, { id: 2 })).toEqual(errorOf('UNKNOWN_METHOD', 2));
    await expectHello(raw, 3);
    // A version-2 acquire is not half-understood: nothing is granted, not even a free disk.
    expect(await raw.call('acquire', { resources: [{ name: free }] }, { v: 2, id: 4 })).toEqual(errorOf('UNSUPPORTED_VERSION', 4));
    await expectHello(raw, 5);
    expect(await raw.call('inquire', {}, { id: 6 })).toMatchObject({ id: 6, ok: true, result: { locks: [] } });
    await expectUnaffected(agent, held);
  });

  it('discards a line over 1 MiB with LINE_TOO_LONG, answers the request after it, and accepts a line of exactly 1 MiB', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    const free = storage.image('free.img');
    await using raw = await RawAgentSocket.connect(agent.socketPath);
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'client' } }, { id: 1 })).toMatchObject({ ok: true });

    // A valid acquire, padded with JSON whitespace to a given length in bytes (newline excluded).
    const padded = (id: number, bytes: number): string => {
      const body = JSON.stringify({ v: 1, id, method: 'acquire', params: { resources: [{ name: free }] } });
      return body.slice(0, -1) + ' '.repeat(bytes - body.length) + '}';
    };
    const tooLong = padded(2, MAX_LINE_BYTES + 1);
    expect(Buffer.byteLength(tooLong)).toBe(MAX_LINE_BYTES + 1);
    // The oversized line and the next request in one write: the second must not be swallowed.
    raw.write(tooLong + '\n' + JSON.stringify({ v: 1, id: 3, method: 'inquire', params: {} }) + '\n');
    expect(await raw.next()).toEqual(errorOf('LINE_TOO_LONG', null));
    expect(await raw.next()).toMatchObject({ id: 3, ok: true, result: { locks: [] } });
    await expectHello(raw, 4);

    raw.write(padded(5, MAX_LINE_BYTES) + '\n');
    expect(await raw.next()).toMatchObject({ id: 5, ok: true, result: { grants: [expect.objectContaining({ resource: free })] } });
    await expectUnaffected(agent, held);
  });

  it('keeps owner registration rules: NOT_REGISTERED before register, ALREADY_REGISTERED twice or for a bound owner', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    const free = storage.image('free.img');
    await using raw = await RawAgentSocket.connect(agent.socketPath);

    expect(await raw.call('acquire', { resources: [{ name: free }] }, { id: 1 })).toEqual(errorOf('NOT_REGISTERED', 1));
    expect(await raw.call('release', {}, { id: 2 })).toEqual(errorOf('NOT_REGISTERED', 2));
    await expectHello(raw, 3);

    // The holder's uuid is bound to the holder's live connection: nobody else may take it over,
    // however the uuid is spelt (without dashes, in capitals: libvirt reads all of them as one).
    expect(await raw.call('register', { owner: { uuid: held.uuid, name: 'holder' } }, { id: 4 })).toEqual(errorOf('ALREADY_REGISTERED', 4));
    expect(await raw.call('register', { owner: { uuid: held.uuid.replaceAll('-', '').toUpperCase(), name: 'holder' } }, { id: 4 })).toEqual(errorOf('ALREADY_REGISTERED', 4));
    expect(await raw.call('release', {}, { id: 5 })).toEqual(errorOf('NOT_REGISTERED', 5));

    const mine = randomUUID();
    expect(await raw.call('register', { owner: { uuid: mine, name: 'first' } }, { id: 6 })).toMatchObject({ id: 6, ok: true });
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'second' } }, { id: 7 })).toEqual(errorOf('ALREADY_REGISTERED', 7));
    // The first registration still stands: an acquire is the first owner's.
    expect(await raw.call('acquire', { resources: [{ name: free }] }, { id: 8 })).toMatchObject({ id: 8, ok: true });
    expect(await raw.call('inquire', {}, { id: 9 })).toMatchObject({ ok: true, result: { owner: { uuid: mine, name: 'first' }, locks: [expect.objectContaining({ resource: free })] } });
    await expectUnaffected(agent, held);
  });

  it('answers a restricted connection that lists locks, registers again, inquires another owner or stops the agent with DENIED', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    await using raw = await RawAgentSocket.connect(agent.socketPath);
    const mine = randomUUID();
    expect(await raw.call('register', { owner: { uuid: mine, name: 'vm' }, restricted: true }, { id: 1 })).toMatchObject({ ok: true, result: { restricted: true } });

    expect(await raw.call('locks', {}, { id: 2 })).toEqual(errorOf('DENIED', 2));
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'other' } }, { id: 3 })).toEqual(errorOf('DENIED', 3));
    expect(await raw.call('inquire', { owner: held.uuid }, { id: 4 })).toEqual(errorOf('DENIED', 4));
    expect(await raw.call('shutdown', { releaseAll: true }, { id: 5 })).toEqual(errorOf('DENIED', 5));
    // Still its own owner's connection, and the agent still serves everyone.
    expect(await raw.call('inquire', {}, { id: 6 })).toMatchObject({ id: 6, ok: true, result: { owner: { uuid: mine } } });
    await expectHello(raw, 7);
    await expectUnaffected(agent, held);
  });

  it('refuses to release what the owner does not hold with NOT_HELD, releasing nothing of the request', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    const mineDisk = storage.image('mine.img');
    await using raw = await RawAgentSocket.connect(agent.socketPath);
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'client' } }, { id: 1 })).toMatchObject({ ok: true });
    const granted = await raw.call('acquire', { resources: [{ name: mineDisk }] }, { id: 2 });
    expect(granted).toMatchObject({ ok: true });

    // One held name and one that is the other owner's: all or nothing, so mine stays held too.
    expect(await raw.call('release', { resources: [{ name: mineDisk }, { name: held.grant.resource }] }, { id: 3 })).toEqual(errorOf('NOT_HELD', 3));
    expect(await raw.call('release', { resources: [{ name: join(storage.imagesDir, 'never-existed.img') }] }, { id: 4 })).toEqual(errorOf('NOT_HELD', 4));
    expect(await raw.call('release', { resources: [{ name: 'plain-name-never-held' }] }, { id: 5 })).toEqual(errorOf('NOT_HELD', 5));
    expect(await raw.call('inquire', {}, { id: 6 })).toMatchObject({ ok: true, result: { locks: [expect.objectContaining({ resource: mineDisk })] } });
    const myLockPath = (granted.result as { grants: Grant[] }).grants[0]!.lockPath;
    expect(await tryLockFrom(myLockPath)).toBe('busy');
    await expectUnaffected(agent, held);
  });

  describe('in a direct lockspace', () => {
    function directConfig(storage: SharedStorage): Partial<AgentConfigInput> {
      return { lockspaces: [{ name: 'direct', kind: 'direct', roots: [storage.imagesDir] }] };
    }

    it('refuses paths that resolve outside the roots (OUTSIDE_LOCKSPACE), missing images, unknown lockspaces and relative names', async () => {
      await using storage = await SharedStorage.create();
      await using agent = await AgentProcess.start({ storage, config: directConfig(storage) });
      const held = await holdDisk(agent, storage.image('held.img'));
      // A real image beside the images dir: it exists, so only the roots can refuse it.
      const outside = join(storage.root, 'outside.img');
      writeFileSync(outside, '');
      const escape = join(storage.imagesDir, 'link-out.img');
      symlinkSync(outside, escape);
      await using raw = await RawAgentSocket.connect(agent.socketPath);
      expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'client' } }, { id: 1 })).toMatchObject({ ok: true });

      let id = 1;
      const acquire = (name: string, lockspace?: string) =>
        raw.call('acquire', { resources: [{ name, ...(lockspace === undefined ? {} : { lockspace }) }] }, { id: ++id });
      for (const name of [outside, `${storage.imagesDir}/../outside.img`, escape]) {
        const reply = await acquire(name);
        expect(reply, name).toEqual(errorOf('OUTSIDE_LOCKSPACE', id));
        expect(reply.error?.details, name).toMatchObject({ resolved: outside });
      }
      expect(await acquire(join(storage.imagesDir, 'missing.img'))).toEqual(errorOf('RESOURCE_NOT_FOUND', id));
      expect(await acquire(storage.image('fine.img'), 'nosuch')).toEqual(errorOf('NO_LOCKSPACE', id));
      expect(await acquire('images/fine.img')).toEqual(errorOf('INVALID_REQUEST', id));
      await expectHello(raw, 100);
      expect(await raw.call('inquire', {}, { id: 101 })).toMatchObject({ ok: true, result: { locks: [] } });
      // The outside image was never locked by the agent.
      expect(await tryLockFrom(outside)).toBe('granted');
      await expectUnaffected(agent, held);
    });

    it('treats an image whose name merely begins with ".." as inside the root', async () => {
      await using storage = await SharedStorage.create();
      await using agent = await AgentProcess.start({ storage, config: directConfig(storage) });
      const disk = storage.image('..hidden.img');
      const c = await agent.client();
      await c.request('register', { owner: { uuid: randomUUID(), name: 'vm' } });
      // "<root>/..hidden.img" is inside <root>; only a ".." path segment leaves it.
      const { grants } = await c.request('acquire', { resources: [{ name: disk }] });
      expect(grants[0]!.resource).toBe(disk);
      expect(await tryLockFrom(disk)).toBe('busy');
    });
  });

  it('refuses invalid params with INVALID_REQUEST and takes no part of the request', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const held = await holdDisk(agent, storage.image('held.img'));
    const free = storage.image('free.img');
    await using raw = await RawAgentSocket.connect(agent.socketPath);

    // Registration params first: a pid-bound owner needs a pid, and the pid must be a live process.
    expect(await raw.call('register', { owner: { uuid: 'not-a-uuid', name: 'x' } }, { id: 1 })).toEqual(errorOf('INVALID_REQUEST', 1));
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'x' }, liveness: 'pid' }, { id: 2 })).toEqual(errorOf('INVALID_REQUEST', 2));
    expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'x', pid: 2 ** 31 - 1 }, liveness: 'pid' }, { id: 3 })).toEqual(errorOf('INVALID_REQUEST', 3));
    // The agent's own pid: losing that owner's locks would have the agent signal itself.
    for (const liveness of ['pid', 'connection']) {
      expect(await raw.call('register', { owner: { uuid: randomUUID(), name: 'x', pid: agent.pid }, liveness }, { id: 3 })).toEqual(errorOf('INVALID_REQUEST', 3));
    }
    const mine = randomUUID();
    expect(await raw.call('register', { owner: { uuid: mine, name: 'client' } }, { id: 4 })).toMatchObject({ id: 4, ok: true });

    const bad: [string, unknown][] = [
      ['mode bogus', { resources: [{ name: free, mode: 'bogus' }] }],
      ['empty resources', { resources: [] }],
      ['no resources', {}],
      ['unknown field', { resources: [{ name: free }], force: true }],
      ['empty name', { resources: [{ name: '' }] }],
      ['129 resources', { resources: Array.from({ length: 129 }, (_, i) => ({ name: `r${i}` })) }],
      // One image named twice (two spellings): refused whole, so the valid-looking first entry is not taken.
      ['one image twice', { resources: [{ name: free }, { name: `${storage.imagesDir}/./free.img` }] }],
      // Names no file system takes: a NUL byte, a component over NAME_MAX (was IO_ERROR, a 500).
      ['a NUL byte', { resources: [{ name: `${storage.imagesDir}/a\0b.img` }] }],
      ['a component too long', { resources: [{ name: `${storage.imagesDir}/${'x'.repeat(300)}.img` }] }],
    ];
    let id = 10;
    for (const [what, params] of bad) {
      expect(await raw.call('acquire', params, { id: ++id }), what).toEqual(errorOf('INVALID_REQUEST', id));
    }
    expect(await raw.call('release', { resources: [{ name: free, mode: 'bogus' }] }, { id: ++id })).toEqual(errorOf('INVALID_REQUEST', id));
    await expectHello(raw, 100);
    expect(await raw.call('inquire', {}, { id: 101 })).toMatchObject({ ok: true, result: { owner: { uuid: mine }, locks: [] } });
    // The free disk really is free: another owner gets it.
    const other = await agent.client();
    await other.request('register', { owner: { uuid: randomUUID(), name: 'other' } });
    expect((await other.request('acquire', { resources: [{ name: free }] })).grants).toHaveLength(1);
    await expectUnaffected(agent, held);
  });

  describe('a state file left in the state dir by another process', () => {
    const STATE_FILE = 'reexec-state.json';
    /** Well-formed, but written by pid 1, and claiming a lock on the disk the test acquires. */
    function foreignState(disk: string, lockPath: string): string {
      return JSON.stringify({
        magic: 'baton-agent-reexec',
        version: 1,
        pid: 1,
        startTime: 1,
        bootId: '00000000-0000-0000-0000-000000000000',
        generation: 4,
        writtenAt: new Date().toISOString(),
        listenFd: 3,
        nextConnectionId: 9,
        nextToken: 1000,
        owners: [{ owner: { uuid: randomUUID(), name: 'ghost', pid: 1 }, liveness: 'pid', startTime: 1, state: 'live' }],
        connections: [],
        locks: [{ lockspace: 'images', identity: disk, lockPath, mode: 'exclusive', fd: 0, dev: '1', ino: '1', holdings: [{ owner: 'ghost', token: 999, since: new Date().toISOString(), requestedAs: [disk] }] }],
      });
    }

    it.each([
      ['foreign (another process’s)', 'foreign'],
      ['corrupt', 'corrupt'],
    ] as const)('is refused when %s: STATE_INVALID logged, the file moved aside, and the agent serves normally', async (_what, kind) => {
      await using storage = await SharedStorage.create();
      await using scratch = await ScratchDir.create('stale-state');
      const disk = storage.image('vm.img');
      const stateDir = join(scratch.path, 'state');
      mkdirSync(stateDir);
      const content = kind === 'foreign' ? foreignState(disk, join(storage.lockDir, 'ghost')) : '{"magic":"baton-agent-reexec","version":1,"pid":';
      writeFileSync(join(stateDir, STATE_FILE), content);

      await using agent = await AgentProcess.start({ storage, config: { stateDir } });
      expect(agent.logsWithCode('STATE_INVALID')).toHaveLength(1);
      expect(existsSync(join(stateDir, STATE_FILE))).toBe(false);
      const aside = readdirSync(stateDir).filter((f) => f.startsWith(`${STATE_FILE}.rejected-`));
      expect(aside).toHaveLength(1);
      // Kept for inspection as it was.
      expect(readFileSync(join(stateDir, aside[0]!), 'utf8')).toBe(content);

      const c = await agent.client();
      expect((await c.request('hello')).generation).toBe(0);
      await c.request('register', { owner: { uuid: randomUUID(), name: 'vm' } });
      const { grants } = await c.request('acquire', { resources: [{ name: disk }] });
      expect(grants[0]!.resource).toBe(disk);
      expect(await tryLockFrom(grants[0]!.lockPath)).toBe('busy');
      // Nothing of the stale file was adopted: the ghost owner holds nothing here.
      const { locks } = await c.request('locks');
      expect(locks.map((l) => l.owner.name)).toEqual(['vm']);
    });
  });
});
