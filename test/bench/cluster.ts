// The cluster section: a fenced grant (client → agent socket → one etcd transaction → local lock
// → reply) against etcd's own floor and against the etcd3 package's `Lock` recipe, all on one
// etcd member on loopback started by the harness, in the same run:
//
//   latency      sequential round trips, interleaved (stats.ts runInterleaved)
//   throughput   64 in flight, the loads interleaved in rounds: the agent (64 owners, 64
//                connections), the in-process LeaseTable, raw etcd transactions (one per grant and
//                one per release: what no batching costs), the same raw transactions group-committed
//                (a ceiling: what etcd does when nothing goes alone), the etcd3 Lock
//   reclaim      cluster-reclaim.ts
//
// The bench imports etcd3 itself only for the floor (its raw KV and lease clients) and the peer
// (its Lock recipe); Baton's own path goes through @baton/etcd as the product does.
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import type { AgentClient } from '@baton/agent';
import { PROTOCOL_VERSION } from '@baton/core';
import { LeaseTable, type EtcdConnection, type HeldLease, type HostSession, type LeaseClaim } from '@baton/etcd';
import { connectEtcd, openSession, type EtcdServer, type ManagedProcess } from '../support/index.js';
import { buf, RawBatched, RawGrant, sampleValue } from './raw-etcd.js';
import { BenchAgent } from './agent-host.js';
import { countersDelta, received, scrapeEtcd, type EtcdCounters } from './etcd-metrics.js';
import { LineClient } from './line-client.js';
import { startLineServer } from './line-server.js';
import { nowUs, runInterleaved, Samples, type Loop, type Summary } from './stats.js';
import { cpuSeconds } from './sys.js';

/** The session TTL of the latency and throughput hosts (the agent's default). */
export const CLUSTER_TTL_SECONDS = 10;

export const CLUSTER_SERIES = [
  'put',
  'txn.acquire',
  'txn.cycle',
  'table.acquire',
  'table.cycle',
  'local.acquire',
  'relay.acquire',
  'fenced.acquire',
  'fenced.cycle',
  'lock.acquire',
  'lock.cycle',
] as const;
export type ClusterSeries = (typeof CLUSTER_SERIES)[number];
export type ClusterLatency = Record<ClusterSeries, Summary>;

function ok(reply: Record<string, unknown>, what: string): void {
  if (reply['ok'] !== true) throw new Error(`${what} failed: ${JSON.stringify(reply)}`);
}

/** One simulated host in the bench process: a connection, a session, a lease table. */
export async function openHost(etcd: EtcdServer, cluster: string, host: string, ttlSeconds: number): Promise<{ conn: EtcdConnection; session: HostSession; table: LeaseTable }> {
  const conn = connectEtcd(etcd.endpoints, ttlSeconds, cluster);
  try {
    return { conn, session: await openSession(conn, host, { lockspaces: ['bench'] }), table: new LeaseTable(conn, host) };
  } catch (err) {
    conn.close();
    throw err;
  }
}

export function claimOf(identity: string, owner: string): LeaseClaim {
  return { lockspace: 'bench', identity, mode: 'exclusive', owner: { uuid: owner, name: owner } };
}

export interface ClusterThroughput {
  name: string;
  inFlight: number;
  seconds: number;
  grants: number;
  grantsPerSecond: number;
  errors: number;
  /** etcd's own counters over the timed runs. */
  etcd: EtcdCounters;
  /** CPUs used during the timed runs (1.0 = one core busy throughout). */
  cpu: { etcd: number; bench: number; agent?: number };
  /** LeaseTable.stats over the timed runs (in-process table), or the group commits' own count (raw, both batched: requests = grants + releases). */
  table?: { txns: number; requests: number };
}

export const THROUGHPUT_KEYS = ['agent', 'table', 'raw', 'rawBatched', 'lock'] as const;
export type ThroughputKey = (typeof THROUGHPUT_KEYS)[number];

interface ThroughputLoad {
  key: ThroughputKey;
  cycle(worker: number): Promise<void>;
  /** The agent whose CPU use is read, when the load goes through one. */
  agentPid?: number;
  /** Transactions committed and requests they carried, as the load counts them itself. */
  counters?(): { txns: number; requests: number };
}

/** `inFlight` workers each looping `cycle` until `seconds` have passed; the cycles in flight then finish and count. */
async function runFor(inFlight: number, seconds: number, cycle: (worker: number) => Promise<void>): Promise<{ grants: number; errors: number }> {
  let running = true;
  let grants = 0;
  let errors = 0;
  const workers = Array.from({ length: inFlight }, async (_, w) => {
    while (running) {
      try {
        await cycle(w);
        grants++;
      } catch {
        errors++;
        await delay(1);
      }
    }
  });
  await delay(seconds * 1000);
  running = false;
  await Promise.all(workers);
  return { grants, errors };
}

export class ClusterRig implements AsyncDisposable {
  private constructor(
    readonly etcd: EtcdServer,
    readonly etcd3: Etcd3,
    private readonly rawLease: string,
    readonly fenced: BenchAgent,
    readonly fencedClient: AgentClient,
    readonly local: BenchAgent,
    readonly localClient: AgentClient,
    readonly inProcess: { conn: EtcdConnection; session: HostSession; table: LeaseTable },
    private readonly relay: ManagedProcess,
    private readonly relayClient: LineClient,
  ) {}

  static async start(etcd: EtcdServer, dir: string, opts: { logLevel?: string }): Promise<ClusterRig> {
    const etcd3 = new Etcd3({ hosts: etcd.clientUrl });
    const closers: (() => Promise<unknown> | void)[] = [() => etcd3.close()];
    try {
      // One lease for every raw grant, kept by its TTL alone (the run is shorter).
      const rawLease = (await etcd3.leaseClient.leaseGrant({ TTL: 3600 })).ID;
      const agentDir = (name: string): { dir: string; lockDir: string } => {
        mkdirSync(join(dir, name, 'locks'), { recursive: true });
        return { dir: join(dir, name), lockDir: join(dir, name, 'locks') };
      };
      const fenced = await BenchAgent.start({
        ...agentDir('fenced'),
        hostId: 'bench-fenced',
        etcd: { endpoints: etcd.endpoints, cluster: 'bench', ttlSeconds: CLUSTER_TTL_SECONDS },
        ...(opts.logLevel ? { logLevel: opts.logLevel } : {}),
      });
      closers.push(() => fenced.shutdown());
      const fencedClient = await fenced.client();
      closers.push(() => fencedClient.close());
      await fencedClient.request('register', { owner: { uuid: randomUUID(), name: 'bench-vm' } });
      const local = await BenchAgent.start({ ...agentDir('local'), hostId: 'bench-local', ...(opts.logLevel ? { logLevel: opts.logLevel } : {}) });
      closers.push(() => local.shutdown());
      const localClient = await local.client();
      closers.push(() => localClient.close());
      await localClient.request('register', { owner: { uuid: randomUUID(), name: 'bench-vm' } });
      const inProcess = await openHost(etcd, 'bench-inproc', 'bench-inproc', CLUSTER_TTL_SECONDS);
      closers.push(() => inProcess.conn.close());
      const relaySocket = join(dir, 'relay.sock');
      const relay = await startLineServer('relay server', 'relay-server', [relaySocket, etcd.clientUrl, rawLease]);
      closers.push(() => relay.close());
      const relayClient = await LineClient.connect(relaySocket);
      return new ClusterRig(etcd, etcd3, rawLease, fenced, fencedClient, local, localClient, inProcess, relay, relayClient);
    } catch (err) {
      for (const close of closers.reverse()) await Promise.resolve(close()).catch(() => undefined);
      throw err;
    }
  }

  private loops(): Loop[] {
    const { etcd3 } = this;
    const putKey = buf('/bench-raw/put');
    const putValue = buf(sampleValue('put'));
    const raw = new RawGrant(etcd3, this.rawLease, 'disk-latency');
    const { session, table } = this.inProcess;
    const claim = claimOf('disk-latency', 'bench-vm');
    const resources = [{ name: 'disk-latency' }];
    return [
      {
        name: 'etcd put (raw)',
        iteration: async (record) => {
          const t0 = nowUs();
          await etcd3.kv.put({ key: putKey, value: putValue });
          record('put', nowUs() - t0);
        },
      },
      {
        name: 'etcd txn grant+release (raw)',
        iteration: async (record) => {
          const t0 = nowUs();
          const rev = await raw.acquire();
          const t1 = nowUs();
          await raw.release(rev);
          const t2 = nowUs();
          record('txn.acquire', t1 - t0);
          record('txn.cycle', t2 - t0);
        },
      },
      {
        name: 'LeaseTable in-process',
        iteration: async (record) => {
          const t0 = nowUs();
          const leases = await table.grant(session, [claim]);
          const t1 = nowUs();
          await table.release(leases);
          const t2 = nowUs();
          record('table.acquire', t1 - t0);
          record('table.cycle', t2 - t0);
        },
      },
      {
        name: 'agent without etcd',
        iteration: async (record) => {
          const t0 = nowUs();
          await this.localClient.request('acquire', { resources });
          const t1 = nowUs();
          await this.localClient.request('release', { resources });
          record('local.acquire', t1 - t0);
        },
      },
      {
        name: 'relay floor',
        iteration: async (record) => {
          const t0 = nowUs();
          const revision = await this.relayClient.request('a');
          const t1 = nowUs();
          if (!/^\d+$/.test(revision)) throw new Error(`relay grant: ${revision}`);
          const released = await this.relayClient.request(`r ${revision}`);
          if (released !== 'ok') throw new Error(`relay release: ${released}`);
          record('relay.acquire', t1 - t0);
        },
      },
      {
        name: 'fenced grant (agent with etcd)',
        iteration: async (record) => {
          const t0 = nowUs();
          await this.fencedClient.request('acquire', { resources });
          const t1 = nowUs();
          await this.fencedClient.request('release', { resources });
          const t2 = nowUs();
          record('fenced.acquire', t1 - t0);
          record('fenced.cycle', t2 - t0);
        },
      },
      {
        name: 'etcd3 Lock',
        iteration: async (record) => {
          const t0 = nowUs();
          const lock = etcd3.lock('/bench-lock/disk-latency').ttl(CLUSTER_TTL_SECONDS);
          await lock.acquire();
          const t1 = nowUs();
          await lock.release();
          const t2 = nowUs();
          record('lock.acquire', t1 - t0);
          record('lock.cycle', t2 - t0);
        },
      },
    ];
  }

  async latency(opts: { n: number; rounds: number; warmup: number }): Promise<ClusterLatency> {
    const samples = new Samples();
    await runInterleaved(this.loops(), { ...opts, chunkWarmup: 20 }, samples);
    return Object.fromEntries(CLUSTER_SERIES.map((s) => [s, samples.summary(s)])) as ClusterLatency;
  }

  /** One way of granting, for the throughput runs: a cycle per worker, and its own counters. */
  private async loads(inFlight: number): Promise<{ loads: ThroughputLoad[]; teardown(): Promise<void> }> {
    // The agent: 64 owners, one connection each, each looping acquire → release of its own resource.
    const clients: LineClient[] = [];
    const teardown = async (): Promise<void> => {
      await Promise.allSettled(clients.map((c) => c.close()));
    };
    try {
      for (let i = 0; i < inFlight; i++) {
        const c = await LineClient.connect(this.fenced.socketPath);
        clients.push(c);
        ok(await c.call(JSON.stringify({ v: PROTOCOL_VERSION, id: 0, method: 'register', params: { owner: { uuid: randomUUID(), name: `tp-${i}` } } })), 'register');
      }
    } catch (err) {
      await teardown();
      throw err;
    }
    const lines = clients.map((_, i) => ({
      acquire: JSON.stringify({ v: PROTOCOL_VERSION, id: 1, method: 'acquire', params: { resources: [{ name: `disk-tp-${i}` }] } }),
      release: JSON.stringify({ v: PROTOCOL_VERSION, id: 2, method: 'release', params: { resources: [{ name: `disk-tp-${i}` }] } }),
    }));
    // The same load on the LeaseTable in this process: its batching without the agent around it.
    const { session, table } = this.inProcess;
    const claims = Array.from({ length: inFlight }, (_, i) => [claimOf(`disk-tp-${i}`, `tp-${i}`)]);
    // One raw etcd transaction per grant and one per release: the same load without batching.
    const raw = Array.from({ length: inFlight }, (_, i) => new RawGrant(this.etcd3, this.rawLease, `disk-tp-${i}`));
    // Raw again, grants and releases each group-committed: what a LeaseTable that batched its
    // releases as it batches its grants would ask of etcd. Not Baton: a ceiling.
    const batched = new RawBatched(this.etcd3, this.rawLease);
    const items = Array.from({ length: inFlight }, (_, i) => {
      const prefix = `/bench-raw/r/disk-tpb-${i}/`;
      return { prefix, key: buf(`${prefix}excl`), value: buf(sampleValue(`disk-tpb-${i}`)) };
    });
    const loads: ThroughputLoad[] = [
      {
        key: 'agent',
        agentPid: this.fenced.pid,
        cycle: async (w) => {
          const c = clients[w]!;
          ok(await c.call(lines[w]!.acquire), 'acquire');
          ok(await c.call(lines[w]!.release), 'release');
        },
      },
      {
        key: 'table',
        cycle: async (w) => {
          const leases: HeldLease[] = await table.grant(session, claims[w]!);
          await table.release(leases);
        },
        counters: () => ({ ...table.stats }),
      },
      {
        key: 'raw',
        cycle: async (w) => {
          const g = raw[w]!;
          await g.release(await g.acquire());
        },
      },
      {
        key: 'rawBatched',
        cycle: async (w) => {
          const item = items[w]!;
          const revision = await batched.grants.submit(item);
          await batched.releases.submit({ key: item.key, revision });
        },
        counters: () => ({ txns: batched.grants.txns + batched.releases.txns, requests: batched.grants.requests + batched.releases.requests }),
      },
      {
        key: 'lock',
        cycle: async (w) => {
          const lock = this.etcd3.lock(`/bench-lock/disk-tp-${w}`).ttl(CLUSTER_TTL_SECONDS);
          await lock.acquire();
          await lock.release();
        },
      },
    ];
    return { loads, teardown };
  }

  /**
   * Every load at `inFlight`, interleaved: `rounds` rounds, each running every load in turn for
   * `secondsPerRound` after a short untimed warm-up, so a burst of other work on the machine
   * touches every load alike and the ratios between them stay fair. etcd's counters and the
   * processes' CPU are read around each timed run and summed per load.
   */
  async throughput(opts: { inFlight: number; rounds: number; secondsPerRound: number; warmupSeconds: number }): Promise<Record<ThroughputKey, ClusterThroughput>> {
    const { loads, teardown } = await this.loads(opts.inFlight);
    const etcdPid = this.etcd.pid!;
    const out = {} as Record<ThroughputKey, ClusterThroughput>;
    try {
      for (const load of loads) {
        out[load.key] = {
          name: load.key,
          inFlight: opts.inFlight,
          seconds: 0,
          grants: 0,
          grantsPerSecond: 0,
          errors: 0,
          etcd: { received: {}, proposals: 0, puts: 0, deletes: 0 },
          cpu: { etcd: 0, bench: 0, ...(load.agentPid === undefined ? {} : { agent: 0 }) },
          ...(load.counters ? { table: { txns: 0, requests: 0 } } : {}),
        };
      }
      for (let round = 0; round < opts.rounds; round++) {
        for (const load of loads) {
          const acc = out[load.key];
          await runFor(opts.inFlight, opts.warmupSeconds, load.cycle);
          const before = await scrapeEtcd(this.etcd.clientUrl);
          const counters0 = load.counters?.();
          const cpu0 = { etcd: cpuSeconds(etcdPid), agent: load.agentPid === undefined ? 0 : cpuSeconds(load.agentPid), bench: process.cpuUsage() };
          const t0 = performance.now();
          const { grants, errors } = await runFor(opts.inFlight, opts.secondsPerRound, load.cycle);
          const elapsed = (performance.now() - t0) / 1000;
          const bench = process.cpuUsage(cpu0.bench);
          acc.cpu.etcd += cpuSeconds(etcdPid) - cpu0.etcd;
          acc.cpu.bench += (bench.user + bench.system) / 1e6;
          if (load.agentPid !== undefined) acc.cpu.agent! += cpuSeconds(load.agentPid) - cpu0.agent;
          const d = countersDelta(before, await scrapeEtcd(this.etcd.clientUrl));
          for (const [m, n] of Object.entries(d.received)) acc.etcd.received[m] = (acc.etcd.received[m] ?? 0) + n;
          acc.etcd.proposals += d.proposals;
          acc.etcd.puts += d.puts;
          acc.etcd.deletes += d.deletes;
          if (counters0 && acc.table) {
            const c1 = load.counters!();
            acc.table.txns += c1.txns - counters0.txns;
            acc.table.requests += c1.requests - counters0.requests;
          }
          acc.seconds += elapsed;
          acc.grants += grants;
          acc.errors += errors;
        }
      }
    } finally {
      await teardown();
    }
    for (const acc of Object.values(out)) {
      acc.grantsPerSecond = acc.grants / acc.seconds;
      // CPU seconds → CPUs (1.0 = one core busy throughout the timed runs).
      acc.cpu.etcd /= acc.seconds;
      acc.cpu.bench /= acc.seconds;
      if (acc.cpu.agent !== undefined) acc.cpu.agent /= acc.seconds;
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.fencedClient.close(), this.localClient.close(), this.relayClient.close()]);
    await Promise.allSettled([this.fenced.shutdown(), this.local.shutdown(), this.relay.close()]);
    await this.inProcess.session.close({ revoke: true }).catch(() => undefined);
    this.inProcess.conn.close();
    await this.etcd3.leaseClient.leaseRevoke({ ID: this.rawLease }).catch(() => undefined);
    this.etcd3.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** etcd Txn RPCs the agent sent per grant; grants and releases are both group-committed. */
export function agentBatching(t: ClusterThroughput): { txnsPerGrant: number; txns: number; opsPerTxn: number; proposalsPerGrant: number } {
  const txns = Math.max(1, received(t.etcd, 'Txn'));
  // Each cycle is one grant and one release: two lease operations per grant.
  return { txnsPerGrant: txns / t.grants, txns, opsPerTxn: (2 * t.grants) / txns, proposalsPerGrant: t.etcd.proposals / t.grants };
}
