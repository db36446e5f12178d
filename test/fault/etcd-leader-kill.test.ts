import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { setImmediate } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leaseTiming, type ClusterLease, type LeaseValue } from '@baton/core';
import { EtcdConfigSchema, EtcdConnection, LeaseTable, type HeldLease, type LeaseClaim, type SessionPhase } from '@baton/etcd';
import { clusterName, EtcdCluster, GrantHistory, monoNow, openSession, SharedStorage, startClusterHost, TcpProxy, waitFor, type AgentProcess } from '../support/index.js';
import { ACQUIRE_CODES, bounded, fromAgent, fromCluster, leaseKey, logLines, outcome, percentile } from './cluster-fault.js';

/**
 * F4: the etcd leader is SIGKILLed in the middle of a burst of concurrent, overlapping acquires
 * from several owners on several hosts. Nothing may be granted twice; every acquire is answered,
 * granted or with a catalogue code; a quorum that re-elects in well under a second costs no host
 * its session; and afterwards what the hosts believe they hold is exactly what etcd holds (a grant
 * whose reply was lost is read back by its nonce; a lease whose release failed is not left behind).
 *
 * Three agents (host-a..c) plus one in-process host (host-d: the etcd adapter's LeaseTable on its
 * own session) whose etcd calls are observed, not replaced, to count the ambiguous commits.
 */
const TTL = 8;
const timing = leaseTiming(TTL);
const DISKS = 6;
const OWNERS_PER_HOST = 3;
const HOSTS = ['host-a', 'host-b', 'host-c', 'host-d'] as const;
/** Longer than any legitimate acquire can take (a grant txn timing out, then three read-backs timing out: 4 request timeouts). */
const UNANSWERED_MS = 6 * timing.requestTimeoutMs;

let etcd: EtcdCluster;
beforeAll(async () => {
  etcd = await EtcdCluster.start();
});
afterAll(async () => {
  await etcd?.close();
});

interface Answer {
  host: string;
  owner: string;
  sent: number;
  at: number;
  code: string;
  message?: string;
}

/** What host-d's etcd calls show of each grant transaction whose reply was lost. */
class AmbiguityLog {
  /** Called when a grant transaction failed without an answer, before the adapter sees it fail. */
  onLost: (() => void) | undefined;
  readonly cases: { key: string; nonce: string; at: number; error: string; outcome: 'committed' | 'not committed' | 'unresolved' }[] = [];

  constructor(conn: EtcdConnection) {
    const txn = conn.txn.bind(conn);
    const range = conn.range.bind(conn);
    conn.txn = async (req, what, timeoutMs) => {
      try {
        return await txn(req, what, timeoutMs);
      } catch (err) {
        const put = req.success?.[0]?.request_put;
        if (what === 'a grant' && put?.key !== undefined && put.value !== undefined) {
          const value = JSON.parse(Buffer.from(put.value).toString()) as LeaseValue;
          this.cases.push({ key: Buffer.from(put.key).toString(), nonce: value.grant, at: monoNow(), error: (err as Error).message, outcome: 'unresolved' });
          this.onLost?.();
        }
        throw err;
      }
    };
    // The read-back of an ambiguous grant reads the batch's first key: see what it found.
    conn.range = async (key, opts, timeoutMs) => {
      const res = await range(key, opts, timeoutMs);
      for (const c of this.cases) {
        if (c.key !== key || c.outcome !== 'unresolved') continue;
        const kv = res.kvs[0];
        const grant = kv === undefined ? undefined : (JSON.parse(kv.value.toString()) as LeaseValue).grant;
        c.outcome = grant === c.nonce ? 'committed' : 'not committed';
      }
      return res;
    };
  }
}

describe('etcd leader killed during a burst of acquires (F4)', () => {
  it('grants nothing twice, answers every acquire, keeps every session, and leaves the hosts and etcd in agreement', async () => {
    await using storage = await SharedStorage.create();
    const cluster = clusterName();
    const opts = { endpoints: etcd.endpoints, cluster, ttlSeconds: TTL };
    const agents: [string, AgentProcess][] = [];
    await using _agents = { [Symbol.asyncDispose]: () => Promise.all(agents.map(([, a]) => a.close())).then(() => undefined) };
    for (const host of ['host-a', 'host-b', 'host-c']) agents.push([host, await startClusterHost(storage, host, opts)]);
    const disks = Array.from({ length: DISKS }, (_, i) => realpathSync(storage.image(`d${i}.img`)));

    // host-d: the adapter in this process, on the same cluster, with its etcd calls observed.
    await using conn = new EtcdConnection(EtcdConfigSchema.parse(opts));
    const ambiguity = new AmbiguityLog(conn);
    const phasesD: SessionPhase[] = [];
    const logD: string[] = [];
    const session = await openSession(conn, 'host-d', {
      lockspaces: ['images'],
      phases: phasesD,
      log: { info: () => {}, warn: (o: object, m: string) => logD.push(`${Math.round(monoNow())} ${m} ${JSON.stringify(o)}`), error: (_o: object, m: string) => logD.push(`${Math.round(monoNow())} ${m}`) },
    });
    const table = new LeaseTable(conn, 'host-d');

    const history = new GrantHistory();
    const answers: Answer[] = [];
    const unanswered: string[] = [];
    const stuck = new Set<string>();
    const releaseErrors: string[] = [];
    const stop = new AbortController();
    const pick = (): string[] => {
      const n = 1 + Math.floor(Math.random() * 2);
      const chosen = new Set<string>();
      while (chosen.size < n) chosen.add(disks[Math.floor(Math.random() * disks.length)]!);
      return [...chosen];
    };
    /** What host-d's owners hold at the end, by its own bookkeeping (the agents keep theirs). */
    const heldByD: { owner: string; leases: HeldLease[]; resources: string[] }[] = [];

    /** One owner's loop: acquire, release, again; its last grant (after the stop) stays held. */
    type Acquired = { code: string; message?: string; grants?: { resource: string; token: number }[] };
    async function ownerLoop(host: string, name: string, acquire: (resources: string[]) => Promise<Acquired>, release: () => Promise<void>): Promise<void> {
      for (let final = false; !final; ) {
        final = stop.signal.aborted;
        const resources = pick();
        const sent = monoNow();
        const r: Acquired = await bounded(acquire(resources), UNANSWERED_MS, { code: 'UNANSWERED' });
        const at = monoNow();
        if (r.code === 'UNANSWERED') {
          unanswered.push(`${name}: acquire of ${resources.map((d) => d.split('/').pop()).join('+')} sent ${killedAt === undefined ? 'before the kill' : `${Math.round(sent - killedAt)} ms after the kill`}, no answer in ${UNANSWERED_MS} ms`);
          stuck.add(name);
          return;
        }
        answers.push({ host, owner: name, sent, at, code: r.code, ...(r.message === undefined ? {} : { message: r.message }) });
        // An in-process refusal can come back without any I/O (LEASE_LOST): let the event loop turn.
        await setImmediate();
        if (r.code !== 'granted') continue;
        for (const g of r.grants!) history.record({ resource: g.resource, token: g.token, holder: name, at, kind: 'grant' });
        if (final) break;
        const releasing = monoNow();
        for (const g of r.grants!) history.record({ resource: g.resource, token: g.token, holder: name, at: releasing, kind: 'release' });
        await release();
      }
    }

    let killedAt: number | undefined;
    const owners: { host: string; name: string; run: Promise<void> }[] = [];
    for (const [host, agent] of agents) {
      for (let i = 0; i < OWNERS_PER_HOST; i++) {
        const c = await agent.client();
        const name = `${host}/o${i}`;
        await c.request('register', { owner: { uuid: randomUUID(), name } });
        owners.push({ host, name, run: Promise.resolve() });
        owners.at(-1)!.run = ownerLoop(
          host,
          name,
          async (resources) => {
            const r = await outcome(c.request('acquire', { resources: resources.map((d) => ({ name: d })) }));
            return { code: r.code, ...(r.message === undefined ? {} : { message: r.message }), ...(r.value ? { grants: r.value.grants } : {}) };
          },
          async () => {
            const r = await outcome(c.request('release', {}));
            if (r.code !== 'granted') releaseErrors.push(`${name}: ${r.code}`);
          },
        );
      }
    }
    for (let i = 0; i < OWNERS_PER_HOST; i++) {
      const uuid = randomUUID();
      const name = `host-d/o${i}`;
      let held: { leases: HeldLease[]; resources: string[] } | undefined;
      owners.push({
        host: 'host-d',
        name,
        run: ownerLoop(
          'host-d',
          name,
          async (resources) => {
            const claims: LeaseClaim[] = resources.map((identity) => ({ lockspace: 'images', identity, mode: 'exclusive', owner: { uuid, name } }));
            const r = await outcome(table.grant(session, claims));
            if (r.code !== 'granted') return { code: r.code, ...(r.message === undefined ? {} : { message: r.message }) };
            held = { leases: r.value!, resources };
            return { code: r.code, grants: r.value!.map((l, j) => ({ resource: resources[j]!, token: l.token })) };
          },
          async () => {
            const leases = held!.leases;
            held = undefined;
            // Best effort, as the agents' own release: what cannot be deleted now is swept below.
            await table.release(leases).catch(() => (table.orphansPossible = true));
          },
        ).then(() => {
          if (held && !stuck.has(name)) heldByD.push({ owner: uuid, ...held });
        }),
      });
    }

    const grantedSince = (h: string, since: number): number => answers.filter((a) => a.host === h && a.code === 'granted' && a.sent > since).length;
    const ownersOf = (h: string): string[] => owners.filter((o) => o.host === h).map((o) => o.name);

    // Mid-burst: once every host has had grants, SIGKILL the leader.
    await waitFor(() => HOSTS.every((h) => grantedSince(h, 0) >= 5), { what: 'every host granting in the burst', deadlineMs: 15_000 });
    const leader = await etcd.leader();
    killedAt = monoNow();
    const killedWall = Date.now();
    await leader.kill('SIGKILL');
    const next = await etcd.leader({ deadlineMs: 10_000 });
    const electedAt = monoNow();
    expect(next).not.toBe(leader);

    // The burst goes on against the new leader until every host has been granted again (or all of
    // its owners are stuck on a request that never gets an answer, which fails below).
    let recovered = true;
    await waitFor(() => HOSTS.every((h) => grantedSince(h, electedAt) >= 5 || ownersOf(h).every((o) => stuck.has(o))), {
      what: 'every host granting again after the election',
      deadlineMs: 20_000,
    }).catch(() => (recovered = false));
    stop.abort();
    await Promise.all(owners.map((o) => o.run));

    // host-d does what the adapter asks of its owner: sweep the leases no grant accounts for.
    // (Any call may land on the dead member: the test's own calls are retried.)
    const sweptByD = table.orphansPossible
      ? await waitFor(() => table.sweepOrphans(session, () => new Set(heldByD.flatMap((d) => d.leases.map((l) => l.key)))), { what: "host-d's sweep", deadlineMs: 5_000 })
      : 0;

    // The agents' tables (and host-d's) against etcd. The agents get the time of a few keepalives
    // to tidy up after the storm (a sweep), not more.
    const c0 = await agents[0]![1].client();
    const views = await Promise.all(agents.map(async ([host, agent]) => [host, await agent.client()] as const));
    let snapshot: { leases: ClusterLease[]; held: string[] } = { leases: [], held: [] };
    let disagreement: string | undefined = 'never compared';
    await waitFor(
      async () => {
        // A read that lands on the dead member fails UNAVAILABLE: that is no answer, ask again.
        const { leases } = await c0.request('clusterLocks', {});
        const held: string[] = [];
        for (const [host, c] of views) held.push(...fromAgent(host, (await c.request('locks', {})).locks));
        for (const d of heldByD) d.leases.forEach((l, j) => held.push(leaseKey('host-d', d.owner, d.resources[j]!, l.token)));
        snapshot = { leases, held: held.sort() };
        const inEtcd = fromCluster(leases);
        const onlyEtcd = inEtcd.filter((k) => !snapshot.held.includes(k));
        const onlyHosts = snapshot.held.filter((k) => !inEtcd.includes(k));
        disagreement = onlyEtcd.length + onlyHosts.length === 0 ? undefined : `in etcd only: ${JSON.stringify(onlyEtcd)}; in the hosts' tables only: ${JSON.stringify(onlyHosts)}`;
        return disagreement === undefined;
      },
      { what: "the hosts' tables and etcd to agree", deadlineMs: 3 * timing.keepaliveMs, intervalMs: 250 },
    ).catch(() => undefined);
    const { leases, held } = snapshot;

    // Figures.
    const granted = answers.filter((a) => a.code === 'granted');
    const firstAfterKill = granted.filter((a) => a.sent > killedAt).sort((x, y) => x.at - y.at)[0];
    const lastBeforeKill = granted.filter((a) => a.at < killedAt).sort((x, y) => y.at - x.at)[0];
    const codes = [...new Set(answers.map((a) => a.code))];
    const grantLatency = granted.filter((a) => a.at < killedAt).map((a) => a.at - a.sent);
    const sessionsLost = [
      ...agents.flatMap(([host, a]) => logLines(a, (m) => m.includes("expired on this host's clock")).map((e) => `${host}: ${String(e.msg)}`)),
      ...(phasesD.includes('expired') ? ['host-d: session expired'] : []),
    ];
    const afterElection = answers.filter((a) => a.sent > electedAt);
    const unavailableAfterElection = afterElection.filter((a) => a.code === 'UNAVAILABLE');
    // The agents' session troubles, stamped relative to the kill (their log times are wall-clock).
    const sinceKill = (e: { time?: unknown }): string => `${Date.parse(String(e.time)) - killedWall} ms`;
    const keepaliveFailures = agents.flatMap(([host, a]) =>
      logLines(a, (m) => m === 'keepalive failed' || m.startsWith('session at risk') || m.includes("expired on this host's clock")).map((e) => `${host} +${sinceKill(e)}: ${String(e.msg).slice(0, 60)} ${String(e.err ?? '').slice(0, 110)}`),
    );
    const leaseReleaseFailures = agents.flatMap(([host, a]) => logLines(a, (m) => m.startsWith('could not delete released leases')).map((e) => `${host}: ${String(e.err)}`));
    console.log(
      JSON.stringify(
        {
          figure: 'F4 etcd leader SIGKILL mid-burst',
          electionMs: Math.round(electedAt - killedAt),
          noGrantGapMs: firstAfterKill && lastBeforeKill ? Math.round(firstAfterKill.at - lastBeforeKill.at) : null,
          firstGrantAfterKillMs: firstAfterKill ? Math.round(firstAfterKill.at - killedAt) : null,
          firstGrantAfterKillPerHostMs: Object.fromEntries(HOSTS.map((h) => [h, Math.round((granted.filter((a) => a.host === h && a.sent > killedAt).sort((x, y) => x.at - y.at)[0]?.at ?? Number.NaN) - killedAt)])),
          acquires: answers.length,
          byCode: Object.fromEntries(codes.map((c) => [c, answers.filter((a) => a.code === c).length])),
          grantLatencyBeforeKillMs: { p50: +percentile(grantLatency, 50).toFixed(1), p99: +percentile(grantLatency, 99).toFixed(1) },
          // host-d's grant transactions that failed without an answer, and what the read-back found.
          // "never sent": the channel had no connection (the dead member); the rest were truly ambiguous.
          ambiguousGrantTxnsHostD: ambiguity.cases.map((c) => ({
            outcome: c.outcome,
            kind: c.error.includes('No connection established') ? 'never sent' : 'ambiguous',
            afterKillMs: Math.round(c.at - killedAt),
            error: c.error.replace(/^etcd did not complete a grant: /, '').slice(0, 60),
          })),
          hostDSwept: sweptByD,
          answersSentAfterElection: afterElection.length,
          unavailableAfterElection: {
            total: unavailableAfterElection.length,
            connectionRefusedByTheDeadMember: unavailableAfterElection.filter((a) => a.message?.includes('ECONNREFUSED')).length,
          },
          agentLeaseReleaseFailures: leaseReleaseFailures,
          keepaliveFailures,
          hostDSessionLog: logD.map((l) => { const [at, ...rest] = l.split(' '); return `${Math.round(Number(at) - killedAt)} ms after the kill: ${rest.join(' ').slice(0, 200)}`; }),
          sessionsLost,
          unanswered,
          disagreement,
          etcdLeases: leases.length,
          hostLeases: held.length,
        },
        null,
        1,
      ),
    );

    // S1/S2 on the history of every grant and release the owners saw, and on etcd's final state.
    history.check();
    const perResource = new Map<string, number>();
    for (const l of leases) perResource.set(l.resource, (perResource.get(l.resource) ?? 0) + 1);
    expect([...perResource].filter(([, n]) => n > 1)).toEqual([]);
    // Every acquire was answered, granted or with a code of the catalogue.
    expect.soft(unanswered, 'acquires that never got an answer').toEqual([]);
    expect.soft(codes.filter((c) => c !== 'granted' && !(ACQUIRE_CODES as readonly string[]).includes(c)), 'codes outside the catalogue answer').toEqual([]);
    expect.soft(releaseErrors).toEqual([]);
    // A quorum re-elected in well under a second: no host had to give up its session.
    expect.soft(sessionsLost, 'sessions lost although a quorum stayed up').toEqual([]);
    expect.soft(recovered, 'every host granting again after the election').toBe(true);
    // What the hosts hold is what etcd holds.
    expect.soft(disagreement ?? 'they agree', "the hosts' tables and etcd").toBe('they agree');
    await session.close({ revoke: true }).catch(() => undefined);
  });
});

describe('a grant whose reply is lost (F4, read-back)', () => {
  it('is read back by its nonce: committed, handed out with the token etcd gave it', async () => {
    // What the leader kill may or may not produce, made certain: the transaction commits and its
    // reply is held back past the deadline (a TCP proxy pauses the way back, then lets it through).
    const member = etcd.members.find((m) => m.running)!;
    await using proxy = await TcpProxy.start({ target: { port: member.clientPort } });
    const cluster = clusterName();
    await using conn = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: [`http://${proxy.hostPort}`], cluster, ttlSeconds: TTL }));
    const ambiguity = new AmbiguityLog(conn);
    const session = await openSession(conn, 'host-e', { lockspaces: ['images'] });
    const table = new LeaseTable(conn, 'host-e');
    // The deadline passes on the held reply; then the link lets everything through again, so the
    // read-back that follows gets its answer.
    ambiguity.onLost = () => proxy.heal();
    proxy.toClient.pause();
    const sent = monoNow();
    const claim: LeaseClaim = { lockspace: 'images', identity: '/disks/lost-reply.img', mode: 'exclusive', owner: { uuid: randomUUID(), name: 'vm-e' } };
    const [lease] = await table.grant(session, [claim]);
    const tookMs = monoNow() - sent;
    expect(ambiguity.cases).toHaveLength(1);
    expect(ambiguity.cases[0]).toMatchObject({ outcome: 'committed' });
    expect(ambiguity.cases[0]!.error).toMatch(/DEADLINE_EXCEEDED/);
    expect(table.orphansPossible).toBe(false);
    // The token handed out is the lease in etcd, on this session.
    const res = await conn.range(lease!.key);
    expect(Number(res.kvs[0]!.mod_revision)).toBe(lease!.token);
    expect(String(res.kvs[0]!.lease)).toBe(session.id);
    console.log(JSON.stringify({ figure: 'F4 lost reply read back', resolvedAfterMs: Math.round(tookMs), requestTimeoutMs: timing.requestTimeoutMs }));
    await table.release([lease!]);
    await session.close({ revoke: true });
  });
});
