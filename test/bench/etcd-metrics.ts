// What etcd itself counted: its Prometheus /metrics (served on the client URL, loopback only),
// scraped before and after a run. The counters are etcd's own, so they count the agent process's
// requests as well as the bench process's, whoever batched what.
import { assertLoopback } from '../support/index.js';

export interface EtcdCounters {
  /** gRPC messages received per method (`grpc_server_msg_received_total`): one per unary call, one per stream message (a keepalive). */
  received: Record<string, number>;
  /** Raft proposals committed (`etcd_server_proposals_committed_total`): every write, each grant/revoke of a lease. */
  proposals: number;
  /** Keys put and deleted by the MVCC store, inside transactions or not. */
  puts: number;
  deletes: number;
}

const RECEIVED = /^grpc_server_msg_received_total\{([^}]*)\}\s+(\S+)$/;
const METHOD = /grpc_method="([^"]+)"/;

function scalar(text: string, name: string): number {
  const m = new RegExp(`^${name}\\s+(\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : Number.NaN;
}

export async function scrapeEtcd(clientUrl: string): Promise<EtcdCounters> {
  const url = new URL('/metrics', clientUrl);
  assertLoopback(url.hostname);
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`etcd /metrics answered ${res.status}`);
  const text = await res.text();
  const received: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = RECEIVED.exec(line);
    if (!m) continue;
    const method = METHOD.exec(m[1]!)?.[1];
    if (method === undefined) continue;
    // `Watch` exists twice (etcd's and the health service's); they add up.
    received[method] = (received[method] ?? 0) + Number(m[2]);
  }
  return {
    received,
    proposals: scalar(text, 'etcd_server_proposals_committed_total'),
    puts: scalar(text, 'etcd_mvcc_put_total'),
    deletes: scalar(text, 'etcd_mvcc_delete_total'),
  };
}

/** What happened between two scrapes. */
export function countersDelta(before: EtcdCounters, after: EtcdCounters): EtcdCounters {
  const received: Record<string, number> = {};
  for (const [method, n] of Object.entries(after.received)) {
    const d = n - (before.received[method] ?? 0);
    if (d !== 0) received[method] = d;
  }
  return { received, proposals: after.proposals - before.proposals, puts: after.puts - before.puts, deletes: after.deletes - before.deletes };
}

/** Every request etcd received (unary calls plus stream messages). */
export function totalReceived(c: EtcdCounters): number {
  return Object.values(c.received).reduce((a, b) => a + b, 0);
}

export function received(c: EtcdCounters, method: string): number {
  return c.received[method] ?? 0;
}

/** etcd's counters summed over every member (each client call lands on one member). */
export async function scrapeMembers(urls: readonly string[]): Promise<EtcdCounters> {
  const all = await Promise.all(urls.map((u) => scrapeEtcd(u)));
  const receivedSum: Record<string, number> = {};
  for (const c of all) for (const [m, n] of Object.entries(c.received)) receivedSum[m] = (receivedSum[m] ?? 0) + n;
  // Every member applies every committed entry: one member's count is the cluster's.
  return { received: receivedSum, proposals: Math.max(...all.map((c) => c.proposals)), puts: Math.max(...all.map((c) => c.puts)), deletes: Math.max(...all.map((c) => c.deletes)) };
}
