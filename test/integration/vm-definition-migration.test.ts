import { join } from 'node:path';
import { realpathSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { MigrationRecord } from '@baton/core';
import type { Log } from '@baton/coordinator';
import { MigrationCluster, migrationFile, quiet, readDiskRecords, waitFor, within, writtenUnder } from '../support/index.js';

/**
 * seed 002: a VM definition change that arrives while the VM migrates is staged in the migration's
 * record (`202`), never applied to either copy in flight, and applied when the migration ends to
 * the copy that survives: the destination when it is done, the source when it aborted. Real etcd,
 * NATS and agent processes with sim VMs; an injected send delay holds each migration mid-send.
 */
const file = migrationFile();
const { servers } = file;

/** Long enough for a test to stage definitions mid-send, even on a loaded machine. */
const SEND_DELAY_MS = 2_000;

/** A VM on host-a with one disk, and a migration of it to host-b held in its send (optionally failing). */
async function migrating(cluster: MigrationCluster, name: string, faults: { failSends?: number } = {}): Promise<{ uuid: string; root: string; rootToken: number; migration: MigrationRecord }> {
  const vm = await cluster.startVm('host-a', name, [`${name}-root.img`]);
  await cluster.driver('host-a').inject(vm.uuid, { sendDelayMs: SEND_DELAY_MS, ...faults });
  const started = await cluster.startMigration(name, 'host-b');
  const migration = await cluster.inPhase(started.id, 'performing');
  return { uuid: vm.uuid, root: cluster.disk(`${name}-root.img`), rootToken: vm.locks[0]!.token, migration };
}

/** Every record a progress stream (SSE) sent, until the stream ended. */
async function progress(id: string): Promise<MigrationRecord[]> {
  const res = await fetch(`${file.mc.coordinators[0]!.url}/v1/migrations/${id}/events`);
  const text = await within(res.text(), 20_000, `the progress stream of ${id}`);
  return text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice('data: '.length)) as MigrationRecord);
}

describe('a VM definition change during a migration', () => {
  it('is staged (202), touches neither copy in flight, and is applied on the destination once the migration is done', async () => {
    const { uuid, root, rootToken, migration } = await migrating(file.mc, 'stg-done');
    const data = file.mc.disk('stg-done-data.img');
    const stream = progress(migration.id);

    const res = await file.mc.define('stg-done', { disks: [{ path: root }, { path: data }], onLeaseLoss: { policy: 'pause' } });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    expect(res.body).toEqual({ staged: true, migration: migration.id });
    // Answered once durably saved: the record in etcd holds it, the migration still mid-send.
    const during = (await file.mc.record(migration.id))!;
    expect(during.phase).toBe('performing');
    expect(during.staged?.definition).toEqual({ disks: [{ path: root, mode: 'exclusive' }, { path: data, mode: 'exclusive' }], onLeaseLoss: { policy: 'pause' } });
    expect(await file.mc.leaseMap(uuid)).toEqual({ [root]: ['host-a', rootToken] });
    expect(readDiskRecords(data)).toEqual([]);

    const done = await file.mc.settled(migration.id);
    expect(done.phase).toBe('done');
    expect(done.staged).toBeNull();
    // The handoff moved exactly the disks the VM had; the new one was leased on the destination after the commit.
    expect(done.resources.map((r) => r.name)).toEqual([root]);
    const leases = await file.mc.leaseMap(uuid);
    expect(leases[root]).toEqual(['host-b', done.tokens.commit]);
    expect(leases[data]?.[0]).toBe('host-b');
    expect(leases[data]![1]).toBeGreaterThan(done.tokens.commit!);
    expect((await writtenUnder(data, leases[data]![1], 3)).map((e) => [e.host, e.token])).toEqual([['host-b', leases[data]![1]]]);
    expect(await file.mc.copies(uuid)).toEqual({ 'host-b': 'running' });

    // Followers saw the staged definition ride along, and the stream ended once it was applied.
    const seen = await stream;
    expect(seen.some((r) => r.phase === 'performing' && r.staged !== null)).toBe(true);
    expect(seen.at(-1)).toMatchObject({ phase: 'done', staged: null });
  });

  it('is applied on the source when the migration aborts (the send failed)', async () => {
    const { uuid, root, rootToken, migration } = await migrating(file.mc, 'stg-abort', { failSends: 1 });
    const data = file.mc.disk('stg-abort-data.img');
    expect((await file.mc.define(uuid, { disks: [{ path: root }, { path: data }] })).status).toBe(202);

    const aborted = await file.mc.settled(migration.id);
    expect(aborted.phase).toBe('aborted');
    expect(aborted.staged).toBeNull();
    const leases = await file.mc.leaseMap(uuid);
    expect(leases[root]).toEqual(['host-a', rootToken]);
    expect(leases[data]?.[0]).toBe('host-a');
    expect((await writtenUnder(data, leases[data]![1], 3)).map((e) => e.host)).toEqual(['host-a']);
    expect(await file.mc.copies(uuid)).toEqual({ 'host-a': 'running' });
  });

  it('keeps only the newest of two changes; a change naming a lockspace a host lacks is refused and staged nowhere', async () => {
    const { uuid, root, migration } = await migrating(file.mc, 'stg-twice');
    const [first, second] = [file.mc.disk('stg-twice-first.img'), file.mc.disk('stg-twice-second.img')];
    expect((await file.mc.define('stg-twice', { disks: [{ path: root }, { path: first }] })).status).toBe(202);
    expect((await file.mc.define('stg-twice', { disks: [{ path: root }, { path: second }] })).status).toBe(202);
    const refused = await file.mc.define('stg-twice', { disks: [{ path: root, lockspace: 'nowhere' }] });
    expect([refused.status, (refused.body as { error: { code: string } }).error.code]).toEqual([404, 'NO_LOCKSPACE']);
    expect((await file.mc.record(migration.id))!.staged?.definition.disks.map((d) => d.path)).toEqual([root, second]);

    const done = await file.mc.settled(migration.id);
    expect(done.phase).toBe('done');
    const leases = await file.mc.leaseMap(uuid);
    expect(Object.keys(leases).sort()).toEqual([root, second].sort());
    await writtenUnder(second, leases[second]![1], 3);
    expect(readDiskRecords(first)).toEqual([]);
  });
});

describe('a staged definition the leader could not apply', () => {
  it('is dropped, and the record settles, when the VM is destroyed before the staged change could be applied', async () => {
    const warnings: Record<string, unknown>[] = [];
    const errors: Record<string, unknown>[] = [];
    await using cluster = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    const log: Log = { ...quiet, warn: (fields) => warnings.push(fields as Record<string, unknown>), error: (fields) => errors.push(fields as Record<string, unknown>) };
    const { coordinator } = await cluster.addCoordinator('coord-1', log);
    await cluster.leader();
    const { uuid, root, migration } = await migrating(cluster, 'stg-gone');
    // A disk not created yet: every apply fails with RESOURCE_NOT_FOUND.
    const missing = join(realpathSync(cluster.storage.imagesDir), 'stg-gone-data.img');
    expect((await cluster.define('stg-gone', { disks: [{ path: root }, { path: missing }] })).status).toBe(202);
    await waitFor(() => errors.some((e) => e.migration === migration.id && e.code === 'RESOURCE_NOT_FOUND'), { what: 'the apply refused', deadlineMs: 15_000 });

    // The migration is closed: the VM may be destroyed, and then there is nothing to apply to.
    await coordinator.destroyVm('stg-gone');
    const settled = await cluster.settled(migration.id);
    expect(settled).toMatchObject({ phase: 'done', staged: null });
    expect(warnings.some((w) => w.migration === migration.id && String(w.host) === 'host-b')).toBe(true);
    expect(await cluster.copies(uuid)).toEqual({});
  });

  it('stays staged (a new migration of the VM is refused meanwhile), and the next leader applies it', async () => {
    await using cluster = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    const errors: Record<string, unknown>[] = [];
    const log: Log = { ...quiet, error: (fields) => errors.push(fields as Record<string, unknown>) };
    await cluster.addCoordinator('coord-1', log);
    const first = await cluster.leader();
    const follower = await cluster.addCoordinator('coord-2');
    const { uuid, root, migration } = await migrating(cluster, 'stg-late');
    // A disk not created yet: every apply fails with RESOURCE_NOT_FOUND until it is there.
    const late = join(realpathSync(cluster.storage.imagesDir), 'stg-late-data.img');
    // Through the follower, which forwards it to the leader.
    expect((await cluster.define('stg-late', { disks: [{ path: root }, { path: late }] }, follower)).body).toEqual({ staged: true, migration: migration.id });

    await waitFor(() => errors.some((e) => e.migration === migration.id && e.code === 'RESOURCE_NOT_FOUND'), { what: 'the apply refused', deadlineMs: 15_000 });
    const stuck = (await cluster.record(migration.id))!;
    expect(stuck).toMatchObject({ phase: 'done', staged: { definition: { disks: [{ path: root }, { path: late }] } } });
    await expect(first.coordinator.migrate({ vm: 'stg-late', to: 'host-a' })).rejects.toMatchObject({ code: 'MIGRATION_CONFLICT' });

    await cluster.closeCoordinator(first);
    cluster.storage.image('stg-late-data.img');
    const second = await cluster.leader();
    expect(second.coordinator.id).toBe('coord-2');
    const settled = await cluster.settled(migration.id);
    expect(settled.staged).toBeNull();
    const leases = await cluster.leaseMap(uuid);
    expect(leases[late]?.[0]).toBe('host-b');
    await writtenUnder(late, leases[late]![1], 3);
  });
});
