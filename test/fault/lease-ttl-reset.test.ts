import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leaseTiming } from '@baton/core';
import { checkDisk, clusterName, EtcdCluster, GrantHistory, monoNow, processState, readDiskRecords, SharedStorage, simVmRunning, StampedEvents, startClusterHost, startSimVm, TcpProxy, waitFor } from '../support/index.js';
import { ACQUIRE_CODES, bounded, logLines, outcome } from './cluster-fault.js';

/**
 * F6: etcd resets every lease's TTL when a new leader takes over (DESIGN §5: a 5 s lease lived
 * 10.4 s). Host A reaches etcd only through TCP proxies; A is partitioned (blackhole) and then the
 * etcd leader is killed, so A's session lease is extended in etcd well past A's last keepalive.
 * Safety must not rest on that TTL: A stops its VM on its own clock, fenceMs after its last
 * answered keepalive was sent, and host B is granted A's disk only after that deadline and after
 * A's VM's last write. When A's link heals, its paused VM stays fenced: the disk is B's now.
 */
const TTL = 4;
const t = leaseTiming(TTL);
/** host-b (TTL 10): longer than any legitimate acquire can take there (a grant txn and three read-backs, each timing out). */
const UNANSWERED_MS = 6 * leaseTiming(10).requestTimeoutMs;

let etcd: EtcdCluster;
beforeAll(async () => {
  etcd = await EtcdCluster.start();
});
afterAll(async () => {
  await etcd?.close();
});


describe('lease TTL reset by a leader change (F6)', () => {
  it('never grants a partitioned host’s disk before its own fence deadline, however long etcd keeps its lease', async () => {
    await using storage = await SharedStorage.create();
    const cluster = clusterName();
    const leader = await etcd.leader();
    const followers = etcd.members.filter((m) => m !== leader);
    // host-a: every member behind a proxy; host-b: the followers directly (the leader is killed below).
    const proxies = await Promise.all(etcd.members.map((m) => TcpProxy.start({ target: { port: m.clientPort } })));
    await using _proxies = { [Symbol.asyncDispose]: () => Promise.all(proxies.map((p) => p.close())).then(() => undefined) };
    await using a = await startClusterHost(storage, 'host-a', { endpoints: proxies.map((p) => `http://${p.hostPort}`), cluster, ttlSeconds: TTL });
    await using b = await startClusterHost(storage, 'host-b', { endpoints: followers.map((m) => m.clientUrl), cluster, ttlSeconds: 10 });
    const disk = realpathSync(storage.image('vm1.img'));
    await using vmA = await startSimVm(a, { uuid: randomUUID(), name: 'vmA', disks: [disk], policy: 'pause' });
    const a1 = await simVmRunning(vmA);
    using eventsA = new StampedEvents(vmA);
    const history = new GrantHistory();
    history.record({ resource: disk, token: a1.token, holder: 'vmA@host-a', at: a1.at, kind: 'grant' });

    // Host B watches host-a's session in etcd and tries for the disk, throughout.
    const cb = await b.client();
    await cb.request('register', { owner: { uuid: randomUUID(), name: 'b-contender' } });
    const cw = await b.client(); // its own connection: requests on one connection are answered in order
    const ttlSeen: { at: number; ttl: number }[] = [];
    const answers: { code: string; sent: number; at: number; token?: number }[] = [];
    const unanswered: string[] = [];
    let partitionedAt: number | undefined;
    const stop = new AbortController();
    const watching = waitFor(
      async () => {
        if (stop.signal.aborted) return true;
        const h = (await cw.request('hosts', {})).hosts.find((x) => x.host === 'host-a');
        ttlSeen.push({ at: monoNow(), ttl: h ? h.ttlLeftSeconds : -1 });
        return false;
      },
      { what: "host-a's session as etcd sees it", signal: stop.signal, intervalMs: 50, attemptTimeoutMs: 30_000 },
    ).catch(() => undefined);
    let bHolds: number | undefined;
    const contending = waitFor(
      async () => {
        if (stop.signal.aborted) return true;
        const sent = monoNow();
        const r = await bounded(outcome(cb.request('acquire', { resources: [{ name: disk }] })), UNANSWERED_MS, { code: 'UNANSWERED', value: undefined });
        if (r.code === 'UNANSWERED') {
          unanswered.push(`host-b's acquire sent ${Math.round(sent - (partitionedAt ?? sent))} ms after the partition: no answer in ${UNANSWERED_MS} ms`);
          return true;
        }
        const token = r.value?.grants[0]?.token;
        answers.push({ code: r.code, sent, at: monoNow(), ...(token === undefined ? {} : { token }) });
        if (token === undefined) return false;
        bHolds = token;
        return true;
      },
      { what: 'host-b contending for the disk', signal: stop.signal, intervalMs: 50, attemptTimeoutMs: 30_000 },
    ).catch(() => undefined);
    await waitFor(() => answers.length > 0 && ttlSeen.length > 0, { what: 'host-b contending and watching', deadlineMs: 5_000 });

    // Partition host-a. Its last keepalive was sent before this instant, so its fence deadline is
    // at most partitionedAt + fenceMs on its own clock.
    partitionedAt = monoNow();
    for (const p of proxies) p.blackhole();
    await waitFor(() => logLines(a, (m) => m.startsWith('session at risk')).length > 0, { what: 'host-a: session at risk', deadlineMs: t.warnMs + 2_000, intervalMs: 5 });
    // Now a leader change: the new leader gives every lease its full TTL again, host-a's included.
    const killedAt = monoNow();
    await leader.kill('SIGKILL');
    await etcd.leader();
    const electedAt = monoNow();

    // Host-a fences on its own clock: the VM stops (pause: SIGSTOP).
    await waitFor(() => logLines(a, (m) => m.includes("expired on this host's clock")).length > 0, { what: 'host-a: session expired', deadlineMs: t.fenceMs + 2_000, intervalMs: 5 });
    const expiredSeenAt = monoNow();
    await waitFor(() => processState(vmA.pid) === 'T', { what: 'vmA stopped', deadlineMs: 2_000, intervalMs: 2 });
    const stoppedSeenAt = monoNow();
    // vmA held the disk until it was seen stopped (a later instant than the stop itself: stricter).
    history.record({ resource: disk, token: a1.token, holder: 'vmA@host-a', at: stoppedSeenAt, kind: 'lost' });

    // Host B gets the disk only once etcd let host-a's (extended) session go.
    await waitFor(() => bHolds !== undefined || unanswered.length > 0, { what: 'host-b granted the disk', deadlineMs: 4 * t.ttlMs + UNANSWERED_MS });
    // Every acquire of host-b is answered (one that is not never ends: the rest would only wait).
    expect(unanswered).toEqual([]);
    const grantedB = answers.find((x) => x.code === 'granted')!;
    history.record({ resource: disk, token: bHolds!, holder: 'b-contender@host-b', at: grantedB.at, kind: 'grant' });
    // Hand it to a VM on host-b, which writes after vmA's last write with a higher token.
    history.record({ resource: disk, token: bHolds!, holder: 'b-contender@host-b', at: monoNow(), kind: 'release' });
    await cb.request('release', {});
    await using vmB = await startSimVm(b, { uuid: randomUUID(), name: 'vmB', disks: [disk], policy: 'kill' });
    const b1 = await simVmRunning(vmB);
    history.record({ resource: disk, token: b1.token, holder: 'vmB@host-b', at: b1.at, kind: 'grant' });
    await waitFor(() => readDiskRecords(disk).some((r) => r.vm === 'vmB'), { what: 'vmB writing', deadlineMs: 5_000 });

    // Host-a's link heals: it opens a new session, but its paused VM's disk is B's: it stays fenced.
    for (const p of proxies) p.heal();
    await waitFor(() => logLines(a, (m) => m.startsWith('vmA stays fenced')).length > 0, { what: 'host-a: vmA stays fenced', deadlineMs: 4 * t.ttlMs, intervalMs: 10 });
    stop.abort();
    await Promise.all([watching, contending]);

    const goneSeen = ttlSeen.find((s) => s.at > partitionedAt && s.ttl < 0);
    const recordsA = readDiskRecords(disk).filter((r) => r.vm === 'vmA');
    const lastWriteA = recordsA.at(-1)!;
    const ttlBeforeKill = ttlSeen.filter((s) => s.at < killedAt).at(-1)?.ttl;
    const ttlMaxAfterElection = Math.max(...ttlSeen.filter((s) => s.at > electedAt).map((s) => s.ttl));
    console.log(
      JSON.stringify({
        figure: 'F6 partition + leader change',
        ttlMs: t.ttlMs,
        fenceMs: t.fenceMs,
        killAfterPartitionMs: Math.round(killedAt - partitionedAt),
        electionMs: Math.round(electedAt - killedAt),
        lastWriteOfAAfterPartitionMs: Math.round(lastWriteA.t - partitionedAt),
        expirySeenAfterPartitionMs: Math.round(expiredSeenAt - partitionedAt),
        vmStoppedSeenAfterPartitionMs: Math.round(stoppedSeenAt - partitionedAt),
        etcdTtlLeftOfABeforeKill: ttlBeforeKill,
        etcdTtlLeftOfAAfterElection: ttlMaxAfterElection,
        sessionGoneInEtcdAfterPartitionMs: goneSeen ? Math.round(goneSeen.at - partitionedAt) : null,
        bGrantSentAfterPartitionMs: Math.round(grantedB.sent - partitionedAt),
        bGrantAfterPartitionMs: Math.round(grantedB.at - partitionedAt),
        bFirstWriteAfterPartitionMs: Math.round(readDiskRecords(disk).find((r) => r.vm === 'vmB')!.t - partitionedAt),
        tokens: { vmA: a1.token, b: bHolds, vmB: b1.token },
      }),
    );

    // The TTL reset happened: etcd kept host-a's session longer than a TTL after its last keepalive.
    expect(ttlMaxAfterElection).toBeGreaterThan(ttlBeforeKill ?? Infinity);
    expect(goneSeen).toBeDefined();
    expect(goneSeen!.at - partitionedAt).toBeGreaterThan(t.ttlMs);
    // Host-a stopped its VM on its own clock: no write at or after its fence deadline.
    expect(lastWriteA.t).toBeLessThan(partitionedAt + t.fenceMs);
    expect(eventsA.find((e) => e.event === 'tokens' || e.event === 'resumed')).toBeUndefined();
    // Host-b was granted only after that deadline (its successful request was even sent after it)
    // and after vmA's last write and stop; every answer before was a refusal of the catalogue.
    expect(grantedB.sent).toBeGreaterThan(partitionedAt + t.fenceMs);
    expect(grantedB.sent).toBeGreaterThan(lastWriteA.t);
    expect(grantedB.at).toBeGreaterThan(stoppedSeenAt);
    expect(answers.filter((x) => x.code !== 'granted').map((x) => x.code).filter((c) => !(ACQUIRE_CODES as readonly string[]).includes(c))).toEqual([]);
    expect(bHolds).toBeGreaterThan(a1.token);
    history.check();
    const epochs = checkDisk(disk);
    expect(epochs.map((e) => [e.vm, e.host, e.token])).toEqual([
      ['vmA', 'host-a', a1.token],
      ['vmB', 'host-b', b1.token],
    ]);
    expect(epochs[1]!.firstT).toBeGreaterThan(epochs[0]!.lastT);
    // After healing, vmA stays paused and never wrote again.
    expect(processState(vmA.pid)).toBe('T');
    expect(readDiskRecords(disk).filter((r) => r.vm === 'vmA')).toHaveLength(recordsA.length);
  });
});
