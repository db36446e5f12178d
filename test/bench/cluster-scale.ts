// Keepalive load against the number of leases: 100 simulated hosts in this process, each with its
// own etcd connection, session (one etcd lease) and LeaseTable, as @baton/etcd runs inside an
// agent. Each host first holds 10 leases, then 100; in both steady states etcd's own request
// counters are read over a window of whole keepalive periods. With one session per host, the
// rate is hosts × 3 / TTL whatever the number of leases; a lease per lock (the etcd3 Lock recipe)
// would need leases × 3 / TTL.
import { setTimeout as delay } from 'node:timers/promises';
import { leaseTiming } from '@baton/core';
import type { EtcdConnection, HostSession, LeaseTable } from '@baton/etcd';
import type { EtcdServer } from '../support/index.js';
import { claimOf, openHost } from './cluster.js';
import { countersDelta, received, scrapeEtcd, totalReceived, type EtcdCounters } from './etcd-metrics.js';
import { cpuSeconds } from './sys.js';

export interface ScaleWindow {
  hosts: number;
  leasesPerHost: number;
  /** Lease keys etcd holds under the cluster's prefix, counted before the window. */
  leaseKeys: number;
  seconds: number;
  /** Every request etcd received in the window, per second (unary calls + stream messages). */
  requestsPerSecond: number;
  keepalivesPerSecond: number;
  etcd: EtcdCounters;
  /** etcd's CPU use in the window, in CPUs. */
  etcdCpu: number;
  /** Sessions not `valid` at the end of the window (at risk or lost): should be none. */
  sessionsNotValid: number;
}

export interface ClusterScaleResult {
  hosts: number;
  ttlSeconds: number;
  keepaliveMs: number;
  /** hosts × 1000 / keepaliveMs: one keepalive per host per period. */
  expectedPerSecond: number;
  openSeconds: number;
  windows: ScaleWindow[];
}

interface SimHost {
  conn: EtcdConnection;
  session: HostSession;
  table: LeaseTable;
  held: number;
}

export async function measureClusterScale(
  etcd: EtcdServer,
  opts: { hosts: number; leasesPerHost: number[]; ttlSeconds: number; windowPeriods: number },
): Promise<ClusterScaleResult> {
  const cluster = 'scale';
  const timing = leaseTiming(opts.ttlSeconds);
  const hosts: SimHost[] = [];
  try {
    const t0 = performance.now();
    // Ten at a time: the sessions' keepalive phases spread over the opening, as hosts' would.
    for (let i = 0; i < opts.hosts; i += 10) {
      const opened = await Promise.all(
        Array.from({ length: Math.min(10, opts.hosts - i) }, (_, j) => openHost(etcd, cluster, `sim-${String(i + j).padStart(3, '0')}`, opts.ttlSeconds)),
      );
      hosts.push(...opened.map((h) => ({ ...h, held: 0 })));
    }
    const openSeconds = (performance.now() - t0) / 1000;
    const windows: ScaleWindow[] = [];
    for (const perHost of opts.leasesPerHost) {
      // Top every host up to `perHost` leases, one acquire request per host (≤ 128 resources).
      await Promise.all(
        hosts.map(async (h, i) => {
          const want = perHost - h.held;
          if (want <= 0) return;
          const claims = Array.from({ length: want }, (_, j) => claimOf(`disk-${i}-${h.held + j}`, `vm-${i}-${Math.floor((h.held + j) / 10)}`));
          const leases = await h.table.grant(h.session, claims);
          h.held += leases.length;
        }),
      );
      const conn = hosts[0]!.conn;
      const leaseKeys = Number((await conn.range(conn.keys.resources, { prefix: true, countOnly: true })).count);
      if (leaseKeys !== opts.hosts * perHost) throw new Error(`etcd holds ${leaseKeys} lease keys, expected ${opts.hosts * perHost}`);
      // Let the grants' traffic drain, then count whole keepalive periods.
      await delay(timing.keepaliveMs / 2);
      const etcdPid = etcd.pid!;
      const before = await scrapeEtcd(etcd.clientUrl);
      const cpu0 = cpuSeconds(etcdPid);
      const w0 = performance.now();
      await delay(opts.windowPeriods * timing.keepaliveMs);
      const after = await scrapeEtcd(etcd.clientUrl);
      const seconds = (performance.now() - w0) / 1000;
      const etcdCpu = (cpuSeconds(etcdPid) - cpu0) / seconds;
      const delta = countersDelta(before, after);
      windows.push({
        hosts: opts.hosts,
        leasesPerHost: perHost,
        leaseKeys,
        seconds,
        requestsPerSecond: totalReceived(delta) / seconds,
        keepalivesPerSecond: received(delta, 'LeaseKeepAlive') / seconds,
        etcd: delta,
        etcdCpu,
        sessionsNotValid: hosts.filter((h) => h.session.phase !== 'valid').length,
      });
    }
    return { hosts: opts.hosts, ttlSeconds: opts.ttlSeconds, keepaliveMs: timing.keepaliveMs, expectedPerSecond: (opts.hosts * 1000) / timing.keepaliveMs, openSeconds, windows };
  } finally {
    // A clean stop: each session revoked takes its leases with it.
    await Promise.allSettled(hosts.map((h) => h.session.close({ revoke: true })));
    for (const h of hosts) h.conn.close();
  }
}
