// The cluster section's rows in the bench's one table, and its targets.
import { agentBatching, type ClusterLatency, type ClusterThroughput, type ThroughputKey } from './cluster.js';
import type { ReclaimResult } from './cluster-reclaim.js';
import type { ClusterScaleResult } from './cluster-scale.js';
import { received } from './etcd-metrics.js';
import { latencyRow, times, type Row } from './table.js';

export interface ClusterResults {
  etcdDataDir?: string;
  latency?: ClusterLatency;
  throughput: Partial<Record<ThroughputKey, ClusterThroughput>>;
  reclaim?: ReclaimResult;
  scale?: ClusterScaleResult;
}

/** The cluster section's targets. */
export const CLUSTER_TARGET = {
  /** Fenced acquire p50 against a raw etcd put p50, and against the etcd3 Lock's acquire+release p50. */
  fencedVsPut: 1.3,
  fencedVsLock: 0.5,
  /** Grants/s at 64 in flight against the etcd3 Lock's, and the stretch figure. */
  tpVsLock: 3,
  tpStretch: 10_000,
  /** Reclaim after a host's death: at most TTL + this. */
  reclaimSlackMs: 1_000,
  /** Keepalive load with 10× the leases: at most this times the load with 1×. */
  scaleRatio: 1.1,
};

const int = (v: number): string => Math.round(v).toLocaleString('en-US');
const pct = (cpus: number | undefined): string => (cpus === undefined ? '' : `${(cpus * 100).toFixed(0)}%`);

export function clusterRows(c: ClusterResults): Row[] {
  const rows: Row[] = [];
  const l = c.latency;
  if (l) {
    const put = l.put.p50;
    const lockCycle = l['lock.cycle'].p50;
    const vsPut = l['fenced.acquire'].p50 / put;
    const vsLock = l['fenced.acquire'].p50 / lockCycle;
    rows.push(latencyRow('[cluster] etcd put (etcd3 raw KV client)', l.put, { ratio: 'floor' }));
    rows.push(latencyRow('[cluster] etcd txn: compare prefix empty → put on a lease (raw)', l['txn.acquire'], { ratio: `${times(l['txn.acquire'].p50, put)} put` }));
    rows.push(latencyRow('[cluster] etcd txn grant + txn delete (raw)', l['txn.cycle'], { ratio: `${times(l['txn.cycle'].p50, put)} put` }));
    rows.push(latencyRow('[cluster] LeaseTable.grant in-process (@baton/etcd, no agent)', l['table.acquire'], { ratio: `${times(l['table.acquire'].p50, put)} put` }));
    rows.push(latencyRow('[cluster] LeaseTable grant+release in-process', l['table.cycle'], { ratio: `${times(l['table.cycle'].p50, put)} put` }));
    rows.push(latencyRow('[cluster] local grant, agent without etcd (AgentClient)', l['local.acquire'], { ratio: `${times(l['local.acquire'].p50, put)} put` }));
    const relay = l['relay.acquire'].p50;
    rows.push(latencyRow('[cluster] relay floor: a process that only forwards the grant txn (socket line → etcd3 txn)', l['relay.acquire'], { ratio: `${times(relay, put)} put` }));
    rows.push(
      latencyRow('[cluster] fenced acquire: agent + etcd txn (AgentClient)', l['fenced.acquire'], {
        ratio: `${vsPut.toFixed(2)}× put, ${vsLock.toFixed(2)}× Lock a+r, ${times(l['fenced.acquire'].p50, relay)} relay`,
        target: `≤ ${CLUSTER_TARGET.fencedVsPut}× put, ≤ ${CLUSTER_TARGET.fencedVsLock}× Lock a+r`,
        result: vsPut <= CLUSTER_TARGET.fencedVsPut && vsLock <= CLUSTER_TARGET.fencedVsLock ? 'PASS' : 'MISS',
        checks: [
          { what: 'fenced acquire p50 vs raw etcd put p50', value: vsPut, limit: CLUSTER_TARGET.fencedVsPut, pass: vsPut <= CLUSTER_TARGET.fencedVsPut },
          { what: 'fenced acquire p50 vs etcd3 Lock acquire+release p50', value: vsLock, limit: CLUSTER_TARGET.fencedVsLock, pass: vsLock <= CLUSTER_TARGET.fencedVsLock },
        ],
      }),
    );
    rows.push(latencyRow('[cluster] fenced acquire+release (AgentClient)', l['fenced.cycle'], { ratio: `${times(l['fenced.cycle'].p50, lockCycle)} Lock a+r` }));
    rows.push(latencyRow('[cluster] etcd3 Lock acquire (lease grant + txn)', l['lock.acquire'], { ratio: `${times(l['lock.acquire'].p50, put)} put` }));
    rows.push(latencyRow('[cluster] etcd3 Lock acquire+release (peer)', l['lock.cycle'], { ratio: `peer; ${times(lockCycle, put)} put` }));
  }
  const t = c.throughput;
  const lock = t.lock;
  const tpRow = (name: string, r: ClusterThroughput, extra: Partial<Row>): Row => ({ name, n: r.grants, value: `${int(r.grantsPerSecond)} grants/s`, ...extra });
  if (t.agent) {
    const a = t.agent;
    const b = agentBatching(a);
    const vsLock = lock ? a.grantsPerSecond / lock.grantsPerSecond : Number.NaN;
    rows.push(
      tpRow(`[cluster] throughput: agent, ${a.inFlight} owners/conns × 1 in flight, acquire+release`, a, {
        ratio: `${lock ? `${vsLock.toFixed(1)}× etcd3 Lock; ` : ''}agent ${pct(a.cpu.agent)}, etcd ${pct(a.cpu.etcd)}, clients ${pct(a.cpu.bench)} CPU${a.errors ? `; ${a.errors} errors` : ''}`,
        target: `≥ ${CLUSTER_TARGET.tpVsLock}× Lock`,
        result: vsLock >= CLUSTER_TARGET.tpVsLock ? 'PASS' : 'MISS',
        checks: [{ what: 'agent grants/s at 64 in flight vs etcd3 Lock at 64 in flight', value: vsLock, limit: CLUSTER_TARGET.tpVsLock, pass: vsLock >= CLUSTER_TARGET.tpVsLock }],
      }),
    );
    rows.push({
      name: '[cluster] throughput stretch: agent grants/s at 64 in flight',
      value: `${int(a.grantsPerSecond)} grants/s`,
      target: `≥ ${int(CLUSTER_TARGET.tpStretch)} grants/s`,
      result: a.grantsPerSecond >= CLUSTER_TARGET.tpStretch ? 'PASS' : 'MISS',
      checks: [{ what: 'agent grants/s at 64 in flight (stretch)', value: a.grantsPerSecond, limit: CLUSTER_TARGET.tpStretch, pass: a.grantsPerSecond >= CLUSTER_TARGET.tpStretch }],
    });
    rows.push({
      name: '[cluster] batching in the agent (etcd /metrics): grants and releases per txn',
      n: b.txns,
      value: `${b.opsPerTxn.toFixed(1)} ops/txn`,
      ratio: `${int(b.txns)} Txn RPCs = ${b.txnsPerGrant.toFixed(2)}/grant (grants and releases group-committed); ${b.proposalsPerGrant.toFixed(2)} raft proposals/grant`,
    });
  }
  if (t.table) {
    const r = t.table;
    const s = r.table!;
    rows.push(
      tpRow(`[cluster] throughput: LeaseTable in-process, ${r.inFlight} in flight, grant+release`, r, {
        ratio: `${(s.requests / s.txns).toFixed(1)} grants/txn (LeaseTable.stats); bench ${pct(r.cpu.bench)}, etcd ${pct(r.cpu.etcd)} CPU`,
      }),
    );
  }
  if (t.raw) {
    const r = t.raw;
    rows.push(
      tpRow(`[cluster] throughput: raw etcd txn per grant + per release, ${r.inFlight} in flight (no batching)`, r, {
        ratio: `${(received(r.etcd, 'Txn') / r.grants).toFixed(2)} Txn/grant; bench ${pct(r.cpu.bench)}, etcd ${pct(r.cpu.etcd)} CPU`,
      }),
    );
  }
  if (t.rawBatched) {
    const r = t.rawBatched;
    const s = r.table!;
    rows.push(
      tpRow(`[cluster] throughput: raw etcd, grants and releases both group-committed, ${r.inFlight} in flight (ceiling)`, r, {
        ratio: `${(received(r.etcd, 'Txn') / r.grants).toFixed(2)} Txn/grant (${(s.requests / s.txns).toFixed(1)} ops/txn); bench ${pct(r.cpu.bench)}, etcd ${pct(r.cpu.etcd)} CPU`,
      }),
    );
  }
  if (lock) {
    rows.push(
      tpRow(`[cluster] throughput: etcd3 Lock, ${lock.inFlight} in flight, acquire+release (peer)`, lock, {
        ratio: `peer; ${(lock.etcd.proposals / lock.grants).toFixed(2)} raft proposals/grant; bench ${pct(lock.cpu.bench)}, etcd ${pct(lock.cpu.etcd)} CPU${lock.errors ? `; ${lock.errors} errors` : ''}`,
      }),
    );
  }
  if (c.reclaim) {
    const r = c.reclaim;
    const limitUs = (r.ttlSeconds * 1000 + CLUSTER_TARGET.reclaimSlackMs) * 1000;
    rows.push({
      name: `[cluster] reclaim: host A's agent SIGKILLed → host B's acquire granted (TTL ${r.ttlSeconds} s)`,
      n: r.trials,
      p50: r.summary.p50,
      p99: r.summary.max,
      value: `max ${int(r.summary.max / 1000)} ms, min ${int(r.summary.min / 1000)} ms`,
      ratio: `TTL ${int(r.ttlSeconds * 1000)} ms, keepalive every ${int(r.keepaliveMs)} ms, polled every ${r.pollMs} ms${r.tokensIncrease ? '' : '; TOKEN NOT INCREASED'}`,
      target: `≤ TTL + ${CLUSTER_TARGET.reclaimSlackMs / 1000} s (max)`,
      result: r.summary.max <= limitUs && r.tokensIncrease ? 'PASS' : 'MISS',
      checks: [
        { what: `reclaim after host death, slowest trial (µs), TTL ${r.ttlSeconds} s`, value: r.summary.max, limit: limitUs, pass: r.summary.max <= limitUs },
        { what: "host B's token above host A's in every trial", value: r.tokensIncrease ? 1 : 0, limit: 1, pass: r.tokensIncrease },
      ],
    });
  }
  if (c.scale) {
    const sc = c.scale;
    const first = sc.windows[0];
    for (const w of sc.windows) {
      const vsFirst = first ? w.requestsPerSecond / first.requestsPerSecond : Number.NaN;
      const isFirst = w === first;
      const perLock = (w.leaseKeys * 3) / sc.ttlSeconds;
      rows.push({
        name: `[cluster] scale: ${sc.hosts} hosts × ${w.leasesPerHost} leases (${int(w.leaseKeys)}), TTL ${sc.ttlSeconds} s: etcd requests/s`,
        n: w.leaseKeys,
        value: `${w.requestsPerSecond.toFixed(1)} req/s (${w.keepalivesPerSecond.toFixed(1)} keepalives/s)`,
        ratio: `${isFirst ? '' : `${vsFirst.toFixed(2)}× the ${int(first!.leaseKeys)}-lease rate; `}expected hosts×3/TTL = ${int(sc.expectedPerSecond)}/s; a lease per lock: ${int(perLock)}/s; etcd ${pct(w.etcdCpu)} CPU${w.sessionsNotValid ? `; ${w.sessionsNotValid} sessions not valid` : ''}`,
        ...(isFirst
          ? {}
          : {
              target: `≤ ${CLUSTER_TARGET.scaleRatio}× the ${int(first!.leaseKeys)}-lease rate`,
              result: vsFirst <= CLUSTER_TARGET.scaleRatio && w.sessionsNotValid === 0 ? 'PASS' : 'MISS',
              checks: [
                { what: `etcd requests/s with ${int(w.leaseKeys)} leases vs ${int(first!.leaseKeys)} (${sc.hosts} hosts)`, value: vsFirst, limit: CLUSTER_TARGET.scaleRatio, pass: vsFirst <= CLUSTER_TARGET.scaleRatio },
                { what: 'sessions still valid at the end of the window', value: sc.hosts - w.sessionsNotValid, limit: sc.hosts, pass: w.sessionsNotValid === 0 },
              ],
            }),
      });
    }
  }
  return rows;
}
