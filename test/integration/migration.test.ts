import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { newMigration, transition, type HostedVm, type MigrationRecord } from '@baton/core';
import type { Coordinator } from '@baton/coordinator';
import { LeaseTable, MigrationStore } from '@baton/etcd';
import { runCli } from '../support/agent-io.js';
import { checkDisk, MigrationCluster, migrationServers, openSession, outcomeCode, waitFor, writtenUnder, zombieChildren } from '../support/index.js';

/**
 * Live migration end to end: real etcd, NATS, agent processes with sim VMs writing through the
 * fence guard, coordinators in this process. Each VM's disks are checked for S1/S2 afterwards.
 */
const servers = migrationServers();

const ABORTED_AFTER_COMMIT = ['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'returning', 'restoring', 'aborted'];

/**
 * A VM on host-a, written under its grant, and its migration to host-b with the send slowed by
 * 500 ms: the destination's copy exists (incoming) and the record reaches `performing` before the
 * state arrives, so a test can act on either.
 */
async function slowMigration(mc: MigrationCluster, coordinator: Coordinator, name: string): Promise<{ vm: HostedVm; token: number; started: MigrationRecord }> {
  const vm = await mc.startVm('host-a', name, [`${name}.img`]);
  const token = vm.locks[0]!.token;
  await writtenUnder(mc.disk(`${name}.img`), token);
  await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 500 });
  return { vm, token, started: await coordinator.migrate({ vm: name, to: 'host-b' }) };
}

/** After an abort past commit: the lease is host-a's under the give-back's token, host-a writes under it, and the disk shows host-a's two epochs only. */
async function expectBackOnSource(mc: MigrationCluster, vm: HostedVm, token: number, record: MigrationRecord): Promise<void> {
  const disk = mc.disk(`${vm.name}.img`);
  expect((await mc.leaseMap(vm.uuid))[disk]).toEqual(['host-a', record.tokens.revert]);
  expect(record.tokens.revert).toBeGreaterThan(record.tokens.commit!);
  await writtenUnder(disk, record.tokens.revert!);
  expect(checkDisk(disk).map((e) => [e.host, e.token])).toEqual([
    ['host-a', token],
    ['host-a', record.tokens.revert],
  ]);
}

describe('live migration', () => {
  it('hands the disks over: the VM runs on the destination with the commit token, the source copy is gone, the disks show one writer per token', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    await mc.addCoordinator();
    const vm = await mc.startVm('host-a', 'web1', ['web1-root.img', 'web1-data.img']);
    expect(vm.state).toBe('running');
    expect(vm.locks.map((l) => l.token)).toHaveLength(2);
    // Let the guest write a little on the source first.
    await writtenUnder(mc.disk('web1-root.img'), vm.locks[0]!.token);

    const record = await mc.migrate('web1', 'host-b');
    expect(record.phase).toBe('done');
    expect(record.timeline.map((e) => e.phase)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'confirming', 'done']);
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-b': 'running' });

    // The leases are host-b's, with the commit token, and the guest writes under it.
    await using conn = mc.connectEtcd();
    const leases = (await mc.coordinators[0]!.coordinator.view.leases()).filter((l) => l.owner.uuid === vm.uuid);
    expect(leases.map((l) => [l.host, l.token])).toEqual([
      ['host-b', record.tokens.commit],
      ['host-b', record.tokens.commit],
    ]);
    await writtenUnder(mc.disk('web1-data.img'), record.tokens.commit!);
    for (const disk of ['web1-root.img', 'web1-data.img']) {
      const epochs = checkDisk(mc.disk(disk));
      expect(epochs.map((e) => e.host)).toEqual(['host-a', 'host-b']);
      expect(epochs[1]!.token).toBe(record.tokens.commit);
    }
    expect(conn.keys.prefix).toContain(mc.cluster);
  });

  it('an agent re-executed while its VM runs waits for that VM once it ends: the copy destroyed at confirm leaves no zombie behind', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    await mc.addCoordinator();
    const vm = await mc.startVm('host-a', 'z1', ['z1-root.img']);
    await writtenUnder(mc.disk('z1-root.img'), vm.locks[0]!.token);
    // The VM's process is a child of host-a's agent; after the re-exec, Node no longer knows it.
    const agent = mc.agent('host-a');
    await agent.reexec();
    expect((await mc.migrate('z1', 'host-b')).phase).toBe('done');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-b': 'running' });
    expect(zombieChildren(agent.pid)).toEqual([]);
  });

  it('a failed send leaves everything with the source: the VM keeps running there under its old token, and migrates later', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    await mc.addCoordinator();
    const vm = await mc.startVm('host-a', 'db1', ['db1.img']);
    const token = vm.locks[0]!.token;
    await mc.driver('host-a').inject(vm.uuid, { failSends: 1 });

    const failed = await mc.migrate('db1', 'host-b');
    expect(failed.phase).toBe('aborted');
    expect(failed.timeline.map((e) => e.phase)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'unmarking', 'discarding', 'restoring', 'aborted']);
    expect(failed.timeline.find((e) => e.phase === 'unmarking')?.error).toBe('IO_ERROR');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
    const writes = checkDisk(mc.disk('db1.img'));
    await waitFor(() => checkDisk(mc.disk('db1.img')).at(-1)!.writes > writes.at(-1)!.writes, { what: 'db1 writing on host-a', deadlineMs: 5_000 });
    expect(checkDisk(mc.disk('db1.img')).map((e) => [e.host, e.token])).toEqual([['host-a', token]]);

    const again = await mc.migrate(vm.uuid, 'host-b');
    expect(again.phase).toBe('done');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-b': 'running' });
  });

  it('a destination that cannot unpause after commit: its copy is destroyed, the leases go back to the source under a new token, and the VM runs there again', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    const { coordinator } = await mc.addCoordinator();
    // The destination's hypervisor will refuse the one unpause it is asked for, after the commit.
    const { vm, token, started } = await slowMigration(mc, coordinator, 'app1');
    await waitFor(async () => (await mc.driver('host-b').find(vm.uuid))?.state === 'incoming', { what: 'the incoming copy on host-b', deadlineMs: 5_000, intervalMs: 5 });
    await mc.driver('host-b').inject(vm.uuid, { failResumes: 1 });

    const failed = await mc.settled(started.id);
    expect(failed.timeline.map((e) => e.phase)).toEqual(ABORTED_AFTER_COMMIT);
    expect(failed.timeline.find((e) => e.phase === 'returning')?.error).toBe('IO_ERROR');
    expect(await mc.copies(vm.uuid), 'the copy that never ran is gone').toEqual({ 'host-a': 'running' });
    // The source runs again under the give-back's token; host-b, which never ran, wrote nothing.
    await expectBackOnSource(mc, vm, token, failed);

    const again = await mc.migrate(vm.uuid, 'host-b');
    expect(again.phase).toBe('done');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-b': 'running' });
  });

  it('a destination whose agent dies after commit and never comes back: once its session has expired the resume fails with LEASE_LOST, and the VM runs on its source again', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 3 });
    const { coordinator } = await mc.addCoordinator();
    // host-b's agent is SIGKILLed while the send is under way. The copy's process (detached, as
    // QEMU is from libvirtd) takes the state; host-b's session lives until its TTL, so the commit
    // gives it the leases, and then nobody answers the resume.
    const { vm, token, started } = await slowMigration(mc, coordinator, 'gone1');
    await waitFor(async () => (await mc.record(started.id))?.phase === 'performing', { what: 'the send to begin', deadlineMs: 5_000, intervalMs: 5 });
    await mc.agent('host-b').crash();
    await using conn = mc.connectEtcd();
    await waitFor(async () => (await conn.range(conn.keys.host('host-b'))).kvs.length === 0, { what: 'host-b’s session to expire', deadlineMs: 15_000, intervalMs: 20 });
    // The committed lease went with host-b's session, while the migration still waits for its
    // resume: the commit's marker keeps the disk taken, so a third host asking now is refused.
    await using thief = await openSession(conn, 'host-d', { lockspaces: ['images'] });
    expect(await mc.leaseMap(vm.uuid), 'the committed lease vanished').toEqual({});
    const attempt = await outcomeCode(new LeaseTable(conn, 'host-d').grant(thief, [{ lockspace: 'images', identity: mc.disk('gone1.img'), mode: 'exclusive', owner: { uuid: randomUUID(), name: 'thief' } }]));
    expect([attempt, (await mc.record(started.id))?.phase]).toEqual(['RESOURCE_BUSY', 'committed']);

    const record = await mc.settled(started.id);
    expect(record.timeline.map((e) => e.phase)).toEqual(ABORTED_AFTER_COMMIT);
    expect(record.timeline.find((e) => e.phase === 'returning')?.error).toBe('LEASE_LOST');
    // The source runs the VM again under the give-back's token. host-b's copy stays paused where
    // its agent died: it holds no lease, and no agent could unpause it under one.
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running', 'host-b': 'paused' });
    // The hypervisors tell the two apart: host-b's copy was created for the migration and never ran.
    expect([(await mc.driver('host-a').find(vm.uuid))?.ran, (await mc.driver('host-b').find(vm.uuid))?.ran]).toEqual([true, false]);
    await expectBackOnSource(mc, vm, token, record);
    // When host-b's agent is back, it removes the copy the aborted migration left (before it says
    // it has started), and only that: the VM is on host-a, running, once.
    await mc.agent('host-b').restart();
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
    expect((await mc.migrate(vm.uuid, 'host-b')).phase).toBe('done');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-b': 'running' });
  });

  it('a destination agent stopped past its TTL after commit: the VM goes back to its source without it, and the agent, woken with a new session, removes the copy left behind', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 3 });
    const { coordinator } = await mc.addCoordinator();
    const { vm, token, started } = await slowMigration(mc, coordinator, 'gone3');
    await waitFor(async () => (await mc.record(started.id))?.phase === 'performing', { what: 'the send to begin', deadlineMs: 5_000, intervalMs: 5 });
    const dest = mc.agent('host-b').json.proc;
    await dest.pause();
    const record = await mc.settled(started.id);
    expect(record.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`)).toEqual(ABORTED_AFTER_COMMIT.map((p) => (p === 'returning' ? 'returning(LEASE_LOST)' : p)));
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running', 'host-b': 'paused' });
    // SIGCONT: host-b finds its session lost on its own clock, opens a new one, and then looks for
    // copies that migrations abandoned while it was away.
    await dest.resume();
    await waitFor(async () => (await mc.copies(vm.uuid))['host-b'] === undefined, { what: 'host-b to remove the copy the aborted migration left', deadlineMs: 15_000, intervalMs: 50 });
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
    await expectBackOnSource(mc, vm, token, record);
  });

  it('a destination whose agent is gone before it prepares: once its session has expired the prepare fails with LEASE_LOST, the migration aborts, and the VM never stopped on its source', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 3 });
    const { coordinator } = await mc.addCoordinator();
    const vm = await mc.startVm('host-a', 'gone2', ['gone2.img']);
    const token = vm.locks[0]!.token;
    // host-b dies just before the migration is asked for: its session still counts it alive.
    await mc.agent('host-b').crash();
    const started = await coordinator.migrate({ vm: 'gone2', to: 'host-b' });
    const record = await mc.settled(started.id);
    expect(record.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`)).toEqual(['begun', 'preparing', 'unmarking(LEASE_LOST)', 'discarding', 'restoring', 'aborted']);
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
    expect((await mc.leaseMap(vm.uuid))[mc.disk('gone2.img')]).toEqual(['host-a', token]);
    expect(checkDisk(mc.disk('gone2.img')).map((e) => [e.host, e.token])).toEqual([['host-a', token]]);
  });

  it('a source host powered off mid-send: the migration waits until an operator declares it fenced, then aborts; no copy is left, and the VM starts again elsewhere with a higher token', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 3 });
    const { coordinator } = await mc.addCoordinator();
    const vm = await mc.startVm('host-a', 'lost1', ['lost1.img']);
    const token = vm.locks[0]!.token;
    const disk = mc.disk('lost1.img');
    await writtenUnder(disk, token);
    // The switchover never completes: host-a loses power while it sends.
    await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 60_000 });
    const started = await coordinator.migrate({ vm: 'lost1', to: 'host-b' });
    await waitFor(async () => (await mc.record(started.id))?.phase === 'performing', { what: 'the send to begin', deadlineMs: 5_000, intervalMs: 5 });
    const pid = (await mc.driver('host-a').find(vm.uuid))!.pid;
    await mc.agent('host-a').crash();
    process.kill(pid, 'SIGKILL');
    await using conn = mc.connectEtcd();
    await waitFor(async () => (await conn.range(conn.keys.host('host-a'))).kvs.length === 0, { what: 'host-a’s session to expire', deadlineMs: 15_000, intervalMs: 20 });
    // Expired is not declared: the VM's state may still be on host-a, so the migration waits, and
    // its markers keep the disk from anyone else.
    await using thief = await openSession(conn, 'host-d', { lockspaces: ['images'] });
    const steal = () => outcomeCode(new LeaseTable(conn, 'host-d').grant(thief, [{ lockspace: 'images', identity: disk, mode: 'exclusive', owner: { uuid: randomUUID(), name: 'thief' } }]));
    expect([await steal(), (await mc.record(started.id))?.phase]).toEqual(['RESOURCE_BUSY', 'performing']);

    const declared = await runCli(['host', 'fence', 'host-a', '--i-have-fenced', '--reason', 'host-a lost power', '--socket', mc.agent('host-b').socketPath]);
    expect(declared.status, declared.stderr).toBe(0);
    expect(declared.stdout).toMatch(/^host host-a declared dead and fenced: 0 lease\(s\) released$/m);
    const record = await mc.settled(started.id);
    expect(record.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'unmarking(LEASE_LOST)', 'discarding', 'restoring', 'aborted']);
    // The VM went with host-a; host-b's copy, which never ran, is gone too; the disk is free.
    expect(await mc.copies(vm.uuid)).toEqual({});
    expect(await mc.leaseMap(vm.uuid)).toEqual({});
    // The operator starts it again from its disk, on host-b: a new token, above every earlier one.
    const again = await mc.startVm('host-b', 'lost1', ['lost1.img'], { uuid: vm.uuid });
    expect(again.locks[0]!.token).toBeGreaterThan(token);
    await writtenUnder(disk, again.locks[0]!.token);
    expect(checkDisk(disk).map((e) => [e.host, e.token])).toEqual([
      ['host-a', token],
      ['host-b', again.locks[0]!.token],
    ]);
  });

  it('holds a migration past the per-host limit in begun (its VM runs on, a definition staged meanwhile is saved at once), and starts it when a slot frees', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    const { coordinator } = await mc.addCoordinator('coord-1', undefined, { limits: { perHost: 1 } });
    await mc.leader();
    const first = await mc.startVm('host-a', 'q1', ['q1.img']);
    const second = await mc.startVm('host-a', 'q2', ['q2.img']);
    // The first migration's send lasts long enough for the second to be asked for meanwhile.
    await mc.driver('host-a').inject(first.uuid, { sendDelayMs: 1_000 });
    const running = await coordinator.migrate({ vm: 'q1', to: 'host-b' });
    const queued = await coordinator.migrate({ vm: 'q2', to: 'host-b' });
    expect(queued.phase).toBe('begun');
    expect(await coordinator.metrics.registry.getSingleMetricAsString('baton_migrations_queued')).toContain('baton_migrations_queued 1');
    // Queued, it is still a migration in flight: a second one for its VM is refused.
    await expect(coordinator.migrate({ vm: 'q2', to: 'host-b' })).rejects.toMatchObject({ code: 'MIGRATION_CONFLICT' });
    const disk = mc.disk('q2.img');
    const res = await mc.define('q2', { disks: [{ path: disk }], onLeaseLoss: { policy: 'pause' } });
    expect(res.body).toEqual({ staged: true, migration: queued.id });
    const waiting = (await mc.record(queued.id))!;
    expect(waiting.phase).toBe('begun');
    expect(waiting.staged?.definition.onLeaseLoss).toEqual({ policy: 'pause' });
    expect((await mc.record(running.id))!.phase).not.toBe('done');
    expect(await mc.copies(second.uuid)).toEqual({ 'host-a': 'running' });

    const [done1, done2] = await Promise.all([mc.settled(running.id), mc.settled(queued.id)]);
    expect([done1.phase, done2.phase]).toEqual(['done', 'done']);
    expect(await coordinator.metrics.registry.getSingleMetricAsString('baton_migrations_queued')).toContain('baton_migrations_queued 0');
    // One coordinator, one clock: the second left begun only once the first had ended.
    const at = (r: typeof done1, phase: string): number => r.timeline.find((e) => e.phase === phase)!.atMs;
    expect(at(done2, 'preparing')).toBeGreaterThanOrEqual(at(done1, 'done'));
    expect(done2.staged).toBeNull();
    expect(await mc.copies(second.uuid)).toEqual({ 'host-b': 'running' });
    expect((await mc.leaseMap(second.uuid))[disk]).toEqual(['host-b', done2.tokens.commit]);
  });

  it('a new leader counts the migrations under way before it admits a waiting one', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    await using conn = mc.connectEtcd();
    const store = new MigrationStore(conn);
    // Records a previous leader left, between hosts with no agent: the ones under way are sent
    // their next step again and again, never answered, and so keep their slots.
    const record = (id: string, destination: string) =>
      newMigration({ id, vm: { uuid: randomUUID(), name: id }, source: 'x-1', destination, resources: [{ name: `/d/${id}.img`, lockspace: 'images', mode: 'exclusive' }] }, 0);
    for (const id of ['u-1', 'u-2']) await store.create(transition(record(id, `x-${id}`), { step: 'begin', ok: true, revision: 5, grants: [4] }, 1));
    // Waiting, from the same busy host, and first in etcd's key order.
    await store.create(record('a-waiting', 'x-3'));
    const { coordinator } = await mc.addCoordinator('coord-1', undefined, { limits: { perHost: 2 } });
    await mc.leader();
    await waitFor(async () => (await coordinator.metrics.registry.getSingleMetricAsString('baton_migrations_queued')).includes('baton_migrations_queued 1'), { what: 'a-waiting queued', deadlineMs: 5_000 });
    expect((await store.get('a-waiting'))!.record.phase).toBe('begun');
    expect((await store.get('u-1'))!.record.phase).toBe('preparing');
  });

  it('refuses a second migration of a VM in flight (MIGRATION_CONFLICT) and a destroy during one (MIGRATING)', async () => {
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    const { coordinator } = await mc.addCoordinator();
    await mc.leader();
    const vm = await mc.startVm('host-a', 'app1', ['app1.img']);
    // A slow send keeps the migration open long enough to be raced, even on a loaded machine.
    await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 3_000 });
    const first = await coordinator.migrate({ vm: 'app1', to: 'host-b' });
    await expect(coordinator.migrate({ vm: 'app1', to: 'host-b' })).rejects.toMatchObject({ code: 'MIGRATION_CONFLICT' });
    await expect(coordinator.destroyVm('app1')).rejects.toMatchObject({ code: 'MIGRATING' });
    expect((await mc.settled(first.id)).phase).toBe('done');
    await expect(coordinator.destroyVm('app1')).resolves.toMatchObject({ host: 'host-b', released: 1 });
    expect(await mc.copies(vm.uuid)).toEqual({});
  });
});
