import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leaseTiming } from '@baton/core';
import { checkDisk, EtcdServer, GrantHistory, monoNow, readDiskRecords, staleWrite, StampedEvents, startSimVm, TwoHosts, waitFor } from '../support/index.js';
import { Contender, DeadlineWatch, recordContender, recordVm } from './fault-kit.js';

/**
 * F2: the agent of a host is stopped (SIGSTOP) for more than 2×TTL while its VM keeps running.
 * The VM must stop writing on its own clock; the other host gets the disk with a higher token; a
 * stale writer is refused by the disk's FenceGuard; the woken agent knows its session is gone and
 * grants nothing on it.
 */
const TTL_S = 2;
const T = leaseTiming(TTL_S);

let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});

const hex = (session: unknown): string => BigInt(String(session)).toString(16);

describe('F2 agent SIGSTOP for more than 2×TTL', () => {
  it('the VM self-fences at its deadline, the other host takes over with a higher token, stale writes are refused, the woken agent grants nothing on its old session', async () => {
    await using hosts = await TwoHosts.start(etcd.endpoints, TTL_S);
    const { a, b } = hosts;
    const disk = hosts.disk('f2.img');
    const free = hosts.disk('f2-free.img');
    const history = new GrantHistory();
    const oldSession = a.json.events().find((e) => typeof e.msg === 'string' && e.msg.startsWith('cluster session granted'))!.session;

    await using vm = await startSimVm(a, { uuid: randomUUID(), name: 'vm-a', disks: [disk], policy: 'kill' });
    using vmEvents = new StampedEvents(vm);
    const running = await vmEvents.wait((e) => e.event === 'running', 'running');
    const tokenA = (running.e.grants as { token: number }[])[0]!.token;

    // Two owners on host-a whose acquires will reach it while it is stopped.
    const lateContested = await Contender.on(a, 'late-contested');
    const lateFree = await Contender.on(a, 'late-free');
    const contender = await Contender.on(b, 'contender-b');
    const watch = await DeadlineWatch.on(a);
    await watch.renewal();

    const pausedAt = monoNow();
    await a.json.proc.pause();
    // Every keepalive the agent sent was sent before the pause: its deadline is at most this.
    const deadlineBound = pausedAt + T.fenceMs;
    const selfFenced = await vmEvents.wait((e) => e.event === 'self-fenced', 'self-fenced', 2 * T.ttlMs);
    const granted = await contender.untilGranted(disk, T.ttlMs + 5_000);

    // The VM stopped at its own deadline (its write timer runs every 20 ms; 100 ms allows for
    // scheduling on a loaded machine), not later than the agent's (the event is seen up to a few
    // ms after it is written: 150 ms), and before host-b could have been granted.
    expect(selfFenced.e.overdueMs as number).toBeLessThan(100);
    expect(selfFenced.at).toBeLessThan(deadlineBound + 150);
    expect(selfFenced.at).toBeLessThan(granted.sentAt);
    expect(granted.token).toBeGreaterThan(tokenA);
    const releasedAt = await contender.release();
    recordContender(history, contender, disk, granted, releasedAt);

    await using vmB = await startSimVm(b, { uuid: randomUUID(), name: 'vm-b', disks: [disk], policy: 'kill' });
    using vmBEvents = new StampedEvents(vmB);
    const runningB = await vmBEvents.wait((e) => e.event === 'running', 'running');
    const tokenB = (runningB.e.grants as { token: number }[])[0]!.token;
    expect(tokenB).toBeGreaterThan(granted.token);
    // host-a stays stopped until vm-b has written past 2×TTL after the pause.
    await waitFor(() => readDiskRecords(disk).some((r) => r.vm === 'vm-b' && r.t > pausedAt + 2 * T.ttlMs + 100), { what: 'vm-b writing past pause + 2×TTL', deadlineMs: 3 * T.ttlMs, intervalMs: 10 });

    // A deliberately stale writer: vm-a's token, through the same FencedDisk the VMs write with.
    const refusal = await staleWrite(disk, tokenA, `vm-a host-a ${tokenA} 999999 ${Math.round(monoNow())}\n`);
    expect(refusal?.code).toBe('STALE_TOKEN');
    expect(refusal?.details).toMatchObject({ presented: tokenA });
    expect((refusal?.details as { current: number }).current).toBeGreaterThanOrEqual(tokenB);
    expect(readDiskRecords(disk).some((r) => r.seq === 999999)).toBe(false);

    // Requests that reach host-a while it is stopped, answered when it wakes up.
    const contestedAnswer = lateContested.try(disk);
    const freeAnswer = lateFree.try(free);
    const resumedAt = monoNow();
    await a.json.proc.resume();
    const expired = await a.json.event((e) => typeof e.msg === 'string' && e.msg.includes('expired on this host'), 'session expired on this host', 5_000);
    const [contested, freeOne] = await Promise.all([contestedAnswer, freeAnswer]);
    watch.stop();

    expect(resumedAt - pausedAt).toBeGreaterThan(2 * T.ttlMs);
    expect(expired.session).toBe(oldSession);
    // The contested disk is still locked on this host by vm-a (fenced, not yet gone): refused
    // locally or for the lost session, never granted.
    expect(['RESOURCE_BUSY', 'LEASE_LOST']).toContain(contested.error?.code);
    // What happens to the free disk: the acquire queued during the stop is refused with
    // LEASE_LOST. The woken agent checks its session against its clock before any etcd round
    // trip; the clock has run past the deadline, so the session expires right there.
    expect(freeOne.error?.code).toBe('LEASE_LOST');
    // vm-a is fenced by its policy (kill) when the agent wakes up; it never wrote again.
    await waitFor(() => !vm.proc.running, { what: 'vm-a killed by its agent', deadlineMs: 5_000, intervalMs: 5 });
    expect(vmEvents.find((e) => e.event === 'resumed' || e.event === 'write-refused' || e.event === 'tokens')).toBeUndefined();

    // Then the agent opens a new session; only there can it grant again, with tokens above host-b's.
    const recovered = await a.json.event((e) => typeof e.msg === 'string' && e.msg.startsWith('new cluster session'), 'new cluster session', 5_000);
    expect(recovered.lost).toBe(oldSession);
    expect(recovered.session).not.toBe(oldSession);
    const again = await lateFree.try(free);
    const busy = await lateContested.try(disk);
    // Refused by etcd now (vm-a is gone, so is its local lock): host-b holds the disk.
    expect(busy.error?.code).toBe('RESOURCE_BUSY');
    expect(busy.error?.message).toContain('by another owner in the cluster');
    expect(again.token).toBeGreaterThan(tokenB);
    const leases = (await (await b.client()).request('clusterLocks', {})).leases;
    expect(leases.find((l) => l.resource === free)).toMatchObject({ host: 'host-a', token: again.token, session: hex(recovered.session) });
    expect(leases.find((l) => l.resource === disk)).toMatchObject({ host: 'host-b', token: tokenB });
    expect(leases.filter((l) => l.session === hex(oldSession))).toEqual([]);

    // vm-b keeps writing after host-a woke up; the disk holds two epochs in order.
    await waitFor(() => readDiskRecords(disk).some((r) => r.vm === 'vm-b' && r.t > monoNow() - 50 && r.t > resumedAt), { what: 'vm-b writing after host-a woke up', deadlineMs: 5_000, intervalMs: 10 });
    recordVm(history, vmEvents, 'vm-a@host-a');
    recordVm(history, vmBEvents, 'vm-b@host-b');
    history.record({ resource: free, token: again.token!, holder: 'late-free@host-a', at: again.sentAt, kind: 'grant' });
    history.check();
    const epochs = checkDisk(disk);
    expect(epochs.map((e) => [e.vm, e.host, e.token])).toEqual([
      ['vm-a', 'host-a', tokenA],
      ['vm-b', 'host-b', tokenB],
    ]);
    expect(epochs[0]!.lastT).toBeLessThan(granted.sentAt);
    expect(checkDisk(free)).toEqual([]);
    console.info(
      `F2: TTL ${T.ttlMs} ms; vm-a self-fenced ${Math.round(selfFenced.at - pausedAt)} ms after the pause (overdue ${String(selfFenced.e.overdueMs)} ms); ` +
        `host-b granted ${Math.round(granted.repliedAt - pausedAt)} ms after the pause, token ${tokenA} → ${granted.token} (vm-b ${tokenB}); ` +
        `host-a stopped ${Math.round(resumedAt - pausedAt)} ms; vm-a exit ${JSON.stringify(vm.proc.exitInfo)}; queued acquires: ${contested.error?.code}/${freeOne.error?.code}; after recovery: ${busy.error?.code} and token ${again.token}`,
    );
  });
});
