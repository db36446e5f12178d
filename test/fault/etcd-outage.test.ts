import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { leaseTiming } from '@baton/core';
import { type AgentProcess, checkDisk, EtcdServer, GrantHistory, monoNow, pidAlive, processState, readDiskRecords, simVmRunning, StampedEvents, startSimVm, TwoHosts, waitFor } from '../support/index.js';
import { ACQUIRE_CODES, bounded, logLines, outcome } from './cluster-fault.js';

/**
 * F5: the whole etcd (one member) goes away, its data dir kept, and comes back.
 *
 * - Back before the fence deadline (TTL 15 s: fence 11.25 s after the last keepalive sent): the
 *   host must not fence; its VM writes on with the same token; the lease is the same one.
 * - Back after the TTL (TTL 3 s): the host fences on its own clock — the 'pause' VM is SIGSTOPped,
 *   the 'kill' VM killed; once etcd answers, the host opens a new session, the paused VM gets its
 *   leases back with new, higher tokens in one transaction and resumes; the killed VM's disk goes to
 *   whoever asks next.
 *
 * Throughout, a second host tries to acquire the same disks: it must never be granted while the
 * first holds them (grant history and the disks' own records).
 */

/** A loop on host B: acquire `disk` for its own owner, again and again, until told to stop. */
function contender(b: AgentProcess, disk: string, history: GrantHistory, signal: AbortSignal, unansweredMs: number): { answers: { code: string; at: number; token?: number }[]; done: Promise<void> } {
  const answers: { code: string; at: number; token?: number }[] = [];
  const name = `b-${disk.split('/').pop()}`;
  const done = (async () => {
    const c = await b.client();
    await c.request('register', { owner: { uuid: randomUUID(), name } });
    await waitFor(
      async () => {
        if (signal.aborted) return true;
        const r = await bounded(outcome(c.request('acquire', { resources: [{ name: disk }] })), unansweredMs, { code: 'UNANSWERED', value: undefined });
        const at = monoNow();
        const token = r.value?.grants[0]?.token;
        answers.push({ code: r.code, at, ...(token === undefined ? {} : { token }) });
        if (token !== undefined) {
          history.record({ resource: disk, token, holder: `${name}@host-b`, at, kind: 'grant' });
          history.record({ resource: disk, token, holder: `${name}@host-b`, at: monoNow(), kind: 'release' });
          await c.request('release', {});
        }
        return r.code === 'UNANSWERED'; // a request that never gets an answer ends the loop: reported below
      },
      { what: `host-b contending for ${disk}`, signal, intervalMs: 100, attemptTimeoutMs: 30_000 },
    ).catch(() => undefined);
  })();
  return { answers, done };
}

/** Watches a process's kernel state every few ms: when it was first seen stopped, and whether it ever ran again. */
function watchState(pid: number): { stoppedAt?: number; runningAgainAt?: number; samples: number; stop(): void } {
  const w: { stoppedAt?: number; runningAgainAt?: number; samples: number; stop(): void } = { samples: 0, stop: () => clearInterval(timer) };
  const timer = setInterval(() => {
    const s = processState(pid);
    w.samples++;
    if (s === 'T' && w.stoppedAt === undefined) w.stoppedAt = monoNow();
    if (s !== 'T' && s !== undefined && w.stoppedAt !== undefined && w.runningAgainAt === undefined) w.runningAgainAt = monoNow();
  }, 5);
  return w;
}


describe('etcd outage (F5)', () => {
  it('down 10 s, back before the fence deadline: no fencing, the VM writes on with the same token, the lease is the same', async () => {
    // A TTL whose warning comes 10 s after a keepalive: the outage the issue names ends there.
    const TTL = 20;
    const t = leaseTiming(TTL);
    await using etcd = await EtcdServer.start();
    await using hosts = await TwoHosts.start(etcd.endpoints, TTL);
    const { a, b } = hosts;
    const disk = hosts.disk('vm1.img');
    await using vm = await startSimVm(a, { uuid: randomUUID(), name: 'vm1', disks: [disk], policy: 'pause' });
    const { token } = await simVmRunning(vm);
    const history = new GrantHistory();
    history.record({ resource: disk, token, holder: 'vm1@host-a', at: monoNow(), kind: 'grant' });
    const cb = await b.client();
    const leaseBefore = (await cb.request('clusterLocks', {})).leases;
    expect(leaseBefore).toMatchObject([{ host: 'host-a', resource: disk, token }]);

    // Take etcd away just after host-a's keepalive was answered, so the outage can be as long as the
    // design allows: etcd restarts the TTL on receipt; host-a's next chances are +6.7 s and +13.3 s.
    let lastTtl = Infinity;
    await waitFor(
      async () => {
        const hosts = (await cb.request('hosts', {})).hosts;
        const ttl = hosts.find((h) => h.host === 'host-a')!.ttlLeftSeconds;
        const renewed = ttl > lastTtl;
        lastTtl = ttl;
        return renewed;
      },
      { what: "host-a's next keepalive", deadlineMs: t.keepaliveMs + 3_000, intervalMs: 20 },
    );
    const stop = new AbortController();
    const contending = contender(b, disk, history, stop.signal, 6 * t.requestTimeoutMs);
    const killedAt = monoNow();
    await etcd.kill('SIGKILL');

    // Bring it back once host-a says its session is at risk (warn at TTL/2 = 10 s after the last
    // keepalive sent): observable, and leaves host-a one keepalive (at +13.3 s) before its fence at +15 s.
    await waitFor(() => logLines(a, (m) => m.startsWith('session at risk')).length > 0, { what: 'host-a: session at risk', deadlineMs: t.warnMs + 2_000, intervalMs: 10 });
    await etcd.start();
    const backAt = monoNow();
    await waitFor(() => logLines(a, (m) => m === 'session renewed again').length > 0, { what: 'host-a: session renewed again', deadlineMs: t.keepaliveMs + 3_000, intervalMs: 10 });
    const renewedAt = monoNow();
    // Enough writes after the renewal to see the VM carried on.
    await waitFor(() => readDiskRecords(disk).filter((r) => r.t > renewedAt).length >= 10, { what: 'vm1 writing after the renewal', deadlineMs: 5_000 });
    stop.abort();
    await contending.done;

    const records = readDiskRecords(disk);
    const during = records.filter((r) => r.t >= killedAt && r.t <= renewedAt);
    const gaps = records.slice(1).map((r, i) => r.t - records[i]!.t);
    const leaseAfter = (await cb.request('clusterLocks', {})).leases;
    console.log(
      JSON.stringify({
        figure: 'F5 etcd down, back before the fence deadline',
        ttlMs: t.ttlMs,
        fenceMs: t.fenceMs,
        outageMs: Math.round(backAt - killedAt),
        renewedAfterKillMs: Math.round(renewedAt - killedAt),
        writesDuringOutage: during.length,
        maxWriteGapMs: Math.max(...gaps),
        contenderAnswers: Object.fromEntries([...new Set(contending.answers.map((x) => x.code))].map((c) => [c, contending.answers.filter((x) => x.code === c).length])),
      }),
    );

    expect(backAt - killedAt, 'etcd was down at least 10 s').toBeGreaterThanOrEqual(10_000);
    // No fencing, no session lost, on host-a; the VM never stopped writing, always with its token.
    expect(logLines(a, (m) => m.includes("expired on this host's clock") || m.startsWith('fencing '))).toEqual([]);
    expect(vm.events().filter((e) => ['self-fenced', 'tokens', 'lease-lost', 'terminated'].includes(e.event as string))).toEqual([]);
    expect(during.length).toBeGreaterThan(0);
    expect(Math.max(...gaps)).toBeLessThan(1_000);
    expect(new Set(records.map((r) => r.token))).toEqual(new Set([token]));
    // Host-b got nothing; etcd kept the data and the lease: same key, same token, same session.
    expect(contending.answers.filter((x) => x.code === 'granted')).toEqual([]);
    expect(contending.answers.map((x) => x.code).filter((c) => !(ACQUIRE_CODES as readonly string[]).includes(c))).toEqual([]);
    expect(leaseAfter).toEqual(leaseBefore);
    history.check();
    expect(checkDisk(disk).map((e) => [e.vm, e.host, e.token])).toEqual([['vm1', 'host-a', token]]);
  });

  it('back after the TTL: the host fences on its own clock (pause: stopped; kill: killed), then the paused VM resumes with new, higher tokens', async () => {
    const TTL = 3;
    const t = leaseTiming(TTL);
    await using etcd = await EtcdServer.start();
    await using hosts = await TwoHosts.start(etcd.endpoints, TTL);
    const { a, b, cluster } = hosts;
    const diskP = hosts.disk('paused.img');
    const diskK = hosts.disk('killed.img');
    await using vmP = await startSimVm(a, { uuid: randomUUID(), name: 'vmP', disks: [diskP], policy: 'pause' });
    await using vmK = await startSimVm(a, { uuid: randomUUID(), name: 'vmK', disks: [diskK], policy: 'kill' });
    const p1 = await simVmRunning(vmP);
    const k1 = await simVmRunning(vmK);
    const history = new GrantHistory();
    history.record({ resource: diskP, token: p1.token, holder: 'vmP@host-a', at: p1.at, kind: 'grant' });
    history.record({ resource: diskK, token: k1.token, holder: 'vmK@host-a', at: k1.at, kind: 'grant' });
    using eventsP = new StampedEvents(vmP);
    const stateP = watchState(vmP.pid);
    await etcd.put(`/baton-test/${cluster}/marker`, 'kept');

    const stop = new AbortController();
    const forP = contender(b, diskP, history, stop.signal, 6 * t.requestTimeoutMs);
    const forK = contender(b, diskK, history, stop.signal, 6 * t.requestTimeoutMs);
    await waitFor(() => forP.answers.length > 0 && forK.answers.length > 0, { what: 'host-b contending', deadlineMs: 5_000 });

    const killedAt = monoNow();
    await etcd.kill('SIGKILL');
    // host-a fences on its own clock: the pause VM is stopped, the kill VM is gone.
    await waitFor(() => logLines(a, (m) => m.includes("expired on this host's clock")).length > 0, { what: 'host-a: session expired', deadlineMs: t.fenceMs + 2_000, intervalMs: 5 });
    const expiredAt = monoNow();
    await waitFor(() => stateP.stoppedAt !== undefined, { what: 'vmP stopped (SIGSTOP)', deadlineMs: 2_000, intervalMs: 5 });
    await waitFor(() => !pidAlive(vmK.pid), { what: 'vmK killed', deadlineMs: t.fenceKillGraceMs + 2_000, intervalMs: 5 });
    const kGoneAt = monoNow();
    history.record({ resource: diskK, token: k1.token, holder: 'vmK@host-a', at: kGoneAt, kind: 'lost' });
    const lastPWriteBefore = readDiskRecords(diskP).at(-1)!;

    // Keep etcd away past the TTL: until host-a has failed to open a new session twice, and the
    // TTL has run out since the kill.
    await waitFor(() => logLines(a, (m) => m === 'etcd still unreachable; retrying').length >= 2 && monoNow() - killedAt > t.ttlMs, {
      what: 'an outage past the TTL',
      deadlineMs: t.ttlMs + 4 * t.keepaliveMs,
      intervalMs: 10,
    });
    expect(processState(vmP.pid)).toBe('T');
    expect(readDiskRecords(diskP).at(-1)).toEqual(lastPWriteBefore);
    await etcd.start();
    const backAt = monoNow();

    // host-a: a new session; vmP gets its leases back with a higher token, resumes and writes with it.
    const tokensEvent = await eventsP.wait((e) => e.event === 'tokens', 'vmP gets new tokens', 4 * t.ttlMs);
    const p2 = (tokensEvent.e.grants as { token: number }[])[0]!.token;
    history.record({ resource: diskP, token: p2, holder: 'vmP@host-a', at: tokensEvent.at, kind: 'grant' });
    await waitFor(() => readDiskRecords(diskP).filter((r) => r.token === p2).length >= 5, { what: 'vmP writing with its new token', deadlineMs: 5_000 });
    // host-b's contender for the killed VM's disk gets it once host-a revoked the lost session.
    await waitFor(() => forK.answers.some((x) => x.code === 'granted' || x.code === 'UNANSWERED'), { what: "host-b granted the killed VM's disk", deadlineMs: 4 * t.ttlMs, intervalMs: 20 });
    expect(forK.answers.filter((x) => x.code === 'UNANSWERED'), "host-b's acquires are all answered").toEqual([]);
    stop.abort();
    await Promise.all([forP.done, forK.done]);
    // And a VM on host-b writes on it, after vmK's last write, with a higher token.
    await using vmB = await startSimVm(b, { uuid: randomUUID(), name: 'vmB', disks: [diskK], policy: 'kill' });
    const b1 = await simVmRunning(vmB);
    history.record({ resource: diskK, token: b1.token, holder: 'vmB@host-b', at: b1.at, kind: 'grant' });
    await waitFor(() => readDiskRecords(diskK).some((r) => r.vm === 'vmB'), { what: 'vmB writing', deadlineMs: 5_000 });
    stateP.stop();

    const logA = (prefix: string): number | undefined => {
      const e = logLines(a, (m) => m.startsWith(prefix))[0];
      return e === undefined ? undefined : Date.parse(String(e.time));
    };
    console.log(
      JSON.stringify({
        figure: 'F5 etcd down past the TTL',
        ttlMs: t.ttlMs,
        fenceMs: t.fenceMs,
        outageMs: Math.round(backAt - killedAt),
        expiredAfterKillMs: Math.round(expiredAt - killedAt),
        pStoppedAfterKillMs: Math.round(stateP.stoppedAt! - killedAt),
        kGoneAfterKillMs: Math.round(kGoneAt - killedAt),
        newSessionToResumeMs: (logA('vmP got its leases back') ?? NaN) - (logA('new cluster session') ?? NaN),
        newTokensAfterBackMs: Math.round(tokensEvent.at - backAt),
        tokens: { vmP: [p1.token, p2], vmK: k1.token, vmB: b1.token },
        contenderAnswers: Object.fromEntries(
          [forP, forK].map((f, i) => [i === 0 ? 'diskP' : 'diskK', Object.fromEntries([...new Set(f.answers.map((x) => x.code))].map((c) => [c, f.answers.filter((x) => x.code === c).length]))]),
        ),
      }),
    );

    // The data survived the restart (a marker key, and revisions that go on from where they were).
    expect(await etcd.get(`/baton-test/${cluster}/marker`)).toBe('kept');
    expect(p2).toBeGreaterThan(p1.token);
    expect(b1.token).toBeGreaterThan(k1.token);
    // Fenced on its own clock, before the TTL could run out in etcd.
    expect(stateP.stoppedAt! - killedAt).toBeLessThan(t.ttlMs);
    expect(kGoneAt - killedAt).toBeLessThan(t.ttlMs);
    expect(vmK.proc.exitInfo).toBeDefined();
    expect(logLines(a, (m) => m.startsWith('vmP got its leases back with new tokens and was resumed'))).toHaveLength(1);
    expect(stateP.runningAgainAt).toBeGreaterThan(backAt);
    // Host-b was never given the paused VM's disk; the killed VM's only after vmK was gone.
    expect(forP.answers.filter((x) => x.code === 'granted')).toEqual([]);
    const codes = [...forP.answers, ...forK.answers].map((x) => x.code);
    expect(codes.filter((c) => c !== 'granted' && !(ACQUIRE_CODES as readonly string[]).includes(c))).toEqual([]);
    expect(forK.answers.find((x) => x.code === 'granted')!.at).toBeGreaterThan(kGoneAt);
    history.check();
    const epochsP = checkDisk(diskP);
    expect(epochsP.map((e) => [e.vm, e.host, e.token])).toEqual([
      ['vmP', 'host-a', p1.token],
      ['vmP', 'host-a', p2],
    ]);
    // No write while stopped: the first write with the new token comes after etcd was back.
    expect(epochsP[1]!.firstT).toBeGreaterThan(backAt);
    const epochsK = checkDisk(diskK);
    expect(epochsK.map((e) => [e.vm, e.host, e.token])).toEqual([
      ['vmK', 'host-a', k1.token],
      ['vmB', 'host-b', b1.token],
    ]);
    expect(epochsK[0]!.lastT).toBeLessThan(kGoneAt);
  });
});
