import { randomUUID } from 'node:crypto';
import { existsSync, linkSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentProcess, SharedStorage, tryLockFrom } from '../support/index.js';

/**
 * seed 000: a classic POSIX lock is dropped when the holding process closes *any* descriptor of
 * the file. The agent must never open a held file a second time. The test runs with classic locks
 * (where one stray open+close inside the agent would let the outside prober win) and with OFD
 * locks, and drives every agent path that touches a held file's name.
 */
describe.each([
  { ofdLocks: false, label: 'classic POSIX locks' },
  { ofdLocks: true, label: 'OFD locks' },
])('no other descriptor drops a lock ($label)', ({ ofdLocks }) => {
  it('keeps the lock through repeated, aliased, released and re-executed requests', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({
      storage,
      config: {
        ofdLocks,
        lockspaces: [
          { name: 'images', kind: 'indirect', dir: storage.lockDir, roots: [storage.imagesDir] },
          { name: 'direct', kind: 'direct', roots: [storage.imagesDir] },
        ],
      },
    });
    expect((await (await agent.client()).request('hello')).ofdLocks).toBe(ofdLocks);
    const disk = storage.image('vm.img');
    const raw = storage.image('raw.img');
    const link = join(storage.imagesDir, 'vm-link.img');
    symlinkSync(disk, link);
    const hard = join(storage.imagesDir, 'raw-hardlink.img');
    linkSync(raw, hard);

    const holder = await agent.client();
    await holder.request('register', { owner: { uuid: randomUUID(), name: 'holder' } });
    const { grants } = await holder.request('acquire', { resources: [{ name: disk }, { name: raw, lockspace: 'direct' }] });
    const lockFiles = grants.map((g) => g.lockPath);
    const assertHeld = async (after: string): Promise<void> => {
      for (const f of lockFiles) expect(await tryLockFrom(f), `${f} after ${after}`).toBe('busy');
    };
    await assertHeld('acquire');

    const other = await agent.client();
    await other.request('register', { owner: { uuid: randomUUID(), name: 'other' } });
    const attempts: [string, () => Promise<unknown>][] = [
      ['same name', () => other.request('acquire', { resources: [{ name: disk }] })],
      ['same name, shared', () => other.request('acquire', { resources: [{ name: disk, mode: 'shared' }] })],
      ['symlink spelling', () => other.request('acquire', { resources: [{ name: link }] })],
      ['owner asks twice', () => holder.request('acquire', { resources: [{ name: disk }] })],
      ['direct, same file', () => other.request('acquire', { resources: [{ name: raw, lockspace: 'direct' }] })],
      ['direct, hard link', () => other.request('acquire', { resources: [{ name: hard, lockspace: 'direct' }] })],
      ['direct lock on the indirect lock file', () => other.request('acquire', { resources: [{ name: lockFiles[0]!, lockspace: 'direct' }] })],
      ['release by a non-holder', () => other.request('release', { resources: [{ name: disk }] })],
    ];
    for (const [what, attempt] of attempts) {
      await expect(attempt(), what).rejects.toHaveProperty('code');
      await assertHeld(what);
    }
    await other.request('inquire', {});
    await other.request('locks');
    await assertHeld('inquire and locks');

    // A multi-resource acquire that fails on a held file and rolls back what it locked.
    const fresh = storage.image('fresh.img');
    await expect(other.request('acquire', { resources: [{ name: fresh }, { name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    await assertHeld('a rolled-back acquire');

    await agent.reexec();
    await assertHeld('re-exec');
    await holder.request('release', {});
    // Released: both files are free (the indirect lock file is kept a while for reuse).
    for (const f of lockFiles) expect(await tryLockFrom(f), `${f} after release`).toBe('granted');
    // An agent that stops removes the lock files it kept, and never the images.
    await other.request('shutdown', {});
    await agent.json.proc.exited;
    expect(lockFiles.map((f) => existsSync(f))).toEqual([false, true]);
  });
});
