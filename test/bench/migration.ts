// The migration section (--only migration): what a live migration's handoff costs, against a
// three-member etcd and one nats-server on loopback, with agent processes running sim VMs
// (test/support/migration-cluster.ts: the sim hypervisor, one shared storage) and one coordinator
// in this process, as the integration tests run them:
//
//   handoff   sequential migrations of one VM (one disk) back and forth between two hosts. The
//             critical path is read from the VMs' own event logs: the source VM's `paused` (at
//             switchover, inside perform) to the destination VM's `running` (resume). It is split
//             into phases with the record's timeline (the coordinator's monotonic clock, the same
//             host clock as the VMs') and the instants the coordinator's record saves start and end.
//   floor     in the same run, interleaved with the migrations: one etcd compare-and-put plus two
//             NATS request/reply round trips to a trivial responder in another process.
//   lock      in the same run, interleaved too: a virtlockd-style handoff with the etcd3 package's
//             Lock recipe (the source releases its lock, then the destination acquires it).
//   storm     VMs migrated concurrently among every host, each several times to a random other
//             host; afterwards every disk is checked for S1/S2 and every VM must run on exactly one
//             host, the last one it was sent to.
//
// Every figure here is in microseconds, as the rest of the bench; the VMs' event times are whole
// milliseconds (guest.ts rounds them), so a critical-path sample is ±1 ms.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { Bus, BusConfigSchema } from '@baton/bus';
import { migrationRule, newMigration, rpcDeadline, systemClock, type MigrationRecord } from '@baton/core';
import { CoordinatorConfigSchema, CoordinatorService, type Coordinator, type Log } from '@baton/coordinator';
import type { MigrationStore } from '@baton/etcd';
import { checkDisk, EtcdCluster, ManagedProcess, MigrationCluster, NatsServer, waitFor } from '../support/index.js';
import { countersDelta, received, scrapeEtcd, type EtcdCounters } from './etcd-metrics.js';
import { summarize, type Summary } from './stats.js';
import { cpuTimes } from './sys.js';
import type { Row } from './table.js';

const RESPONDER_ENTRY = fileURLToPath(new URL('./nats-responder.js', import.meta.url));
/** Where a storm that broke a rule leaves its evidence (emptied at each storm's start). */
const DIAGNOSTICS_DIR = fileURLToPath(new URL('./migration-diagnostics/', import.meta.url));
/** QEMU's default maximum downtime at switchover (migrate_set_downtime / downtime-limit). */
export const QEMU_DOWNTIME_MS = 300;
/** The agents' and the coordinator's session TTL: the agent's default. */
const TTL_SECONDS = 10;
/** The longest one migration may take before the bench gives up on it (the storm's share of two CPUs included). */
const MIGRATION_DEADLINE_MS = 30_000;

export interface MigrationBenchOptions {
  hosts: number;
  /** Timed sequential migrations of the handoff VM. */
  handoffs: number;
  rounds: number;
  /** Timed iterations of the floor and of the Lock handoff, each. */
  floorIterations: number;
  storm: { vms: number; perVm: number };
}

/** The critical path's phases, in order; their sum is the path (less a few µs of bookkeeping). */
export const PATH_PHASES = ['stream', 'performReply', 'saveSent', 'commit', 'saveCommitted', 'resume'] as const;
export type PathPhase = (typeof PATH_PHASES)[number];
export const PHASE_LABELS: Record<PathPhase, string> = {
  stream: 'paused → VM `sent`: migration stream + ack (source VM)',
  performReply: 'VM `sent` → record `sent`: source agent drops its locks, NATS reply',
  saveSent: 'record saved as `sent` (etcd write)',
  commit: 'commit step: read host record + lease prefix, commit txn (etcd)',
  saveCommitted: 'record saved as `committed` (etcd write)',
  resume: 'resume → VM `running`: NATS request, agent reads record + leases, locks, unpause',
};

/** What sits between `paused` and `running`, read from a record's timeline. */
export interface PathCount {
  etcdWrites: number;
  busMessages: number;
  steps: string[];
}

export interface HandoffResult {
  migrations: number;
  /** Migrations with both events found in the logs. */
  measured: number;
  notDone: number;
  criticalPath: Summary;
  phases: Record<PathPhase, Summary>;
  path: PathCount;
  /** Every path seen, with how many migrations had it (one entry: every migration alike). */
  pathVariants: { steps: string; n: number }[];
  /** begun → done on the record's timeline. */
  whole: Summary;
  /** etcd's own counters over the timed migrations (all three members), per migration. */
  perMigration: { txn: number; range: number; proposals: number };
  /** S1/S2 on the handoff VM's disk at the end: undefined when they held, else what broke. */
  diskViolation?: string;
}

export interface StormResult {
  vms: number;
  perVm: number;
  hosts: number;
  migrations: number;
  done: number;
  /** From the first migration's start to the last chain's end (a stuck migration waits out its deadline). */
  seconds: number;
  /** From the first migration's start to the end of the last one that completed: the rate's denominator. */
  busySeconds: number;
  perSecond: number;
  maxInFlight: number;
  disksChecked: number;
  /** Every broken rule, in words; and how many of each kind. */
  violations: string[];
  broken: { failed: number; disks: number; copies: number; orphans: number };
  /** Steps the coordinator sent again (its warnings). */
  retries: number;
  whole: Summary;
  criticalPath: Summary;
  /** CPUs the machine used on average during the storm (all processes). */
  machineCpu: number;
}

export interface MigrationResults {
  etcdMembers: number;
  hosts: number;
  handoff?: HandoffResult;
  floor?: { total: Summary; txn: Summary; nats: Summary; range: Summary };
  lock?: { handoff: Summary; free: Summary };
  storm?: StormResult;
}

const nowUs = (): number => Number(process.hrtime.bigint()) / 1000;
/** Every raw etcd call of the floor and the Lock gets one (the product's own calls carry theirs). */
const deadline = (): { deadline: number } => ({ deadline: rpcDeadline(5_000) });

/** A promise with a deadline: rejects naming `what` if it has not settled in `ms`. */
async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** The instants each record save started and ended, per migration (host monotonic ms). */
type SaveTimes = Map<string, { phase: string; startMs: number; endMs: number }[]>;

/**
 * Time the coordinator's record saves. The driver calls `store.save` on the coordinator's own
 * MigrationStore instance, so wrapping that instance's method sees every save it makes; the
 * wrapper adds two clock reads per save and changes nothing else.
 */
function timeSaves(store: MigrationStore): SaveTimes {
  const times: SaveTimes = new Map();
  const save = store.save.bind(store);
  store.save = async (prev, next) => {
    const startMs = systemClock.now();
    const saved = await save(prev, next);
    const list = times.get(next.id) ?? [];
    list.push({ phase: next.phase, startMs, endMs: systemClock.now() });
    times.set(next.id, list);
    return saved;
  };
  return times;
}

/** A coordinator log that counts the steps sent again and keeps its warnings for the diagnostics. */
function countingLog(): { log: Log; retries: () => number; warnings: { atMs: number; fields: object; message: string }[] } {
  let retries = 0;
  const warnings: { atMs: number; fields: object; message: string }[] = [];
  const keep = (fields: object, message: string): void => {
    if (warnings.length < 10_000) warnings.push({ atMs: systemClock.now(), fields, message });
  };
  return {
    log: {
      debug: () => undefined,
      info: () => undefined,
      warn: (f, m) => {
        if (m.includes('sending it again')) retries++;
        keep(f, m);
      },
      error: keep,
    },
    retries: () => retries,
    warnings,
  };
}

/** Start a migration on the leader and wait, bounded, for its record to close. */
async function migrateOnce(mc: MigrationCluster, c: Coordinator, vm: string, to: string): Promise<MigrationRecord> {
  const begun = await c.migrate({ vm, to });
  // The leader's own drive of the record: resolves when it closes, without polling etcd.
  const closed = await withDeadline(c.settled(begun.id), MIGRATION_DEADLINE_MS, `migration ${begun.id}`);
  return closed ?? mc.settled(begun.id, MIGRATION_DEADLINE_MS);
}

interface VmEvent {
  event: string;
  t: number;
}

/** A VM's events on one host, every life of it (the sim driver keeps the log across destroy). */
class EventLogs {
  private readonly cache = new Map<string, VmEvent[]>();

  constructor(private readonly mc: MigrationCluster) {}

  of(host: string, uuid: string): VmEvent[] {
    const key = `${host}/${uuid}`;
    let events = this.cache.get(key);
    if (!events) {
      const path = this.mc.driver(host).eventLog(uuid);
      events = existsSync(path)
        ? readFileSync(path, 'utf8')
            .split('\n')
            .filter((l) => l.startsWith('{'))
            .map((l) => JSON.parse(l) as VmEvent)
        : [];
      this.cache.set(key, events);
    }
    return events;
  }
}

/** The VM events of one migration's handoff, each found inside the timeline's window for it. */
function handoffEvents(record: MigrationRecord, logs: EventLogs): { paused: number; vmSent: number; running: number } | undefined {
  const at = (phase: string): number | undefined => record.timeline.find((e) => e.phase === phase)?.atMs;
  const [performing, sent, committed, confirming] = [at('performing'), at('sent'), at('committed'), at('confirming')];
  if (performing === undefined || sent === undefined || committed === undefined || confirming === undefined) return undefined;
  // The events' t is rounded to whole ms: widen each window to whole ms.
  const within = (e: VmEvent, from: number, to: number): boolean => e.t >= Math.floor(from) && e.t <= Math.ceil(to);
  const source = logs.of(record.source, record.vm.uuid);
  const paused = source.find((e) => e.event === 'paused' && within(e, performing, sent));
  const vmSent = source.find((e) => e.event === 'sent' && within(e, performing, sent));
  const running = logs.of(record.destination, record.vm.uuid).find((e) => e.event === 'running' && within(e, committed, confirming));
  return paused && vmSent && running ? { paused: paused.t, vmSent: vmSent.t, running: running.t } : undefined;
}

/**
 * The etcd writes and bus messages between `paused` and `running`, from the timeline. `paused`
 * happens inside the step the source carries out (perform), `running` inside the one the
 * destination carries out (resume): the last phase entered before each event that awaits such a
 * step is where the window opens and closes. The events' times are whole ms, but the phases are
 * milliseconds apart from them (an etcd read and a NATS hop at least), so the half-ms slack
 * cannot pick the wrong phase. Inside the window: the opening step's reply; each phase entered,
 * by its step (an etcd transaction, or an agent's request and reply) and the record's save that
 * follows; the closing step's request.
 */
export function pathOf(record: MigrationRecord, pausedMs: number, runningMs: number): PathCount {
  const tl = record.timeline;
  const lastAwaiting = (target: 'source' | 'destination', beforeMs: number): number =>
    tl.findLastIndex((e) => e.atMs <= beforeMs + 0.5 && migrationRule(e.phase)?.target === target);
  const open = lastAwaiting('source', pausedMs);
  const close = lastAwaiting('destination', runningMs);
  const out: PathCount = { etcdWrites: 0, busMessages: 0, steps: [] };
  if (open < 0 || close < open) return out;
  out.busMessages++;
  out.steps.push(`${migrationRule(tl[open]!.phase)!.step} reply (NATS)`);
  for (let i = open + 1; i <= close; i++) {
    const rule = migrationRule(tl[i - 1]!.phase)!;
    if (i > open + 1) {
      if (rule.target === 'etcd') {
        out.etcdWrites++;
        out.steps.push(`${rule.step} txn`);
      } else {
        out.busMessages += 2;
        out.steps.push(`${rule.step} request+reply (NATS)`);
      }
    }
    out.etcdWrites++;
    out.steps.push(`save ${tl[i]!.phase}`);
  }
  out.busMessages++;
  out.steps.push(`${migrationRule(tl[close]!.phase)!.step} request (NATS)`);
  return out;
}

/** Per migration: the critical path, its phases (µs), its timeline path; undefined if an event is missing. */
function analyse(record: MigrationRecord, logs: EventLogs, saves: SaveTimes): { path: number; phases: Record<PathPhase, number>; count: PathCount } | undefined {
  const ev = handoffEvents(record, logs);
  const at = (phase: string): number => record.timeline.find((e) => e.phase === phase)!.atMs;
  const save = (phase: string): { startMs: number; endMs: number } | undefined => saves.get(record.id)?.find((s) => s.phase === phase);
  const savedSent = save('sent');
  const savedCommitted = save('committed');
  if (!ev || !savedSent || !savedCommitted) return undefined;
  const ms = (v: number): number => v * 1000;
  return {
    path: ms(ev.running - ev.paused),
    phases: {
      stream: ms(ev.vmSent - ev.paused),
      performReply: ms(at('sent') - ev.vmSent),
      saveSent: ms(savedSent.endMs - savedSent.startMs),
      commit: ms(at('committed') - savedSent.endMs),
      saveCommitted: ms(savedCommitted.endMs - savedCommitted.startMs),
      resume: ms(ev.running - savedCommitted.endMs),
    },
    count: pathOf(record, ev.paused, ev.running),
  };
}

const wholeUs = (r: MigrationRecord): number => (r.timeline.at(-1)!.atMs - r.timeline[0]!.atMs) * 1000;

/** etcd's counters summed over every member (each client call lands on one member). */
async function scrapeMembers(urls: readonly string[]): Promise<EtcdCounters> {
  const all = await Promise.all(urls.map((u) => scrapeEtcd(u)));
  const receivedSum: Record<string, number> = {};
  for (const c of all) for (const [m, n] of Object.entries(c.received)) receivedSum[m] = (receivedSum[m] ?? 0) + n;
  // Every member applies every committed entry: one member's count is the cluster's.
  return { received: receivedSum, proposals: Math.max(...all.map((c) => c.proposals)), puts: Math.max(...all.map((c) => c.puts)), deletes: Math.max(...all.map((c) => c.deletes)) };
}

/** The floor's and the Lock's clients, and the responder process. */
class FloorRig {
  private revision = '0';
  private constructor(
    private readonly etcd: Etcd3,
    private readonly lockSource: Etcd3,
    private readonly lockDestination: Etcd3,
    private readonly bus: Bus,
    private readonly subject: string,
    private readonly responder: ManagedProcess,
    private readonly key: Buffer,
    private readonly value: Buffer,
  ) {}

  static async start(endpoints: string[], natsUrl: string): Promise<FloorRig> {
    const cluster = 'bench-floor';
    const closers: (() => Promise<unknown> | void)[] = [];
    try {
      // Every member, as the product's EtcdConnection is given them: each call goes to a random one.
      const etcd = new Etcd3({ hosts: endpoints });
      closers.push(() => etcd.close());
      const lockSource = new Etcd3({ hosts: endpoints });
      closers.push(() => lockSource.close());
      const lockDestination = new Etcd3({ hosts: endpoints });
      closers.push(() => lockDestination.close());
      const responder = await ManagedProcess.spawn({ name: 'nats responder', command: process.execPath, args: [RESPONDER_ENTRY, natsUrl, cluster, 'responder'] });
      closers.push(() => responder.stop());
      const bus = await Bus.connect(BusConfigSchema.parse({ servers: [natsUrl], cluster }), 'baton-bench-floor');
      closers.push(() => bus.close());
      const subject = bus.subjects.agent('responder', 'echo');
      // Up once it answers (its subscription reached the server).
      await waitFor(
        async () => {
          if (!responder.running) throw new Error(`the responder exited: ${responder.output()}`);
          await bus.request(subject, {}, { timeoutMs: 200 });
          return true;
        },
        { what: 'the NATS responder', deadlineMs: 10_000, intervalMs: 20 },
      );
      // The value a record save writes: a migration record of the same shape.
      const record = newMigration(
        { id: randomUUID(), vm: { uuid: randomUUID(), name: 'floor-vm' }, source: 'host-1', destination: 'host-2', resources: [{ name: '/srv/images/floor-vm.img', lockspace: 'images', mode: 'exclusive' }] },
        systemClock.now(),
      );
      return new FloorRig(etcd, lockSource, lockDestination, bus, subject, responder, Buffer.from('/bench-floor/migrations/floor'), Buffer.from(JSON.stringify(record)));
    } catch (err) {
      for (const close of closers.reverse()) await Promise.resolve(close()).catch(() => undefined);
      throw err;
    }
  }

  /** One etcd compare-and-put (compare on the revision last written, as a record save) + two NATS request/replies. */
  async floor(record: (series: string, us: number) => void): Promise<void> {
    const t0 = nowUs();
    const res = await this.etcd.kv.txn(
      {
        compare: [{ key: this.key, target: 'Mod', result: 'Equal', mod_revision: this.revision }],
        success: [{ request_put: { key: this.key, value: this.value } }],
      },
      deadline(),
    );
    const t1 = nowUs();
    await this.bus.request(this.subject, {}, { timeoutMs: 2_000 });
    const t2 = nowUs();
    await this.bus.request(this.subject, {}, { timeoutMs: 2_000 });
    const t3 = nowUs();
    if (!res.succeeded) throw new Error('the floor compare-and-put found the key changed');
    this.revision = res.header.revision;
    record('floor', t3 - t0);
    record('floor.txn', t1 - t0);
    record('floor.nats', t2 - t1);
    record('floor.nats', t3 - t2);
    // A linearizable read, untimed in the floor: what each of the path's reads costs.
    const r0 = nowUs();
    await this.etcd.kv.range({ key: this.key }, deadline());
    record('floor.range', nowUs() - r0);
  }

  /**
   * virtlockd's order with an etcd lock: the source holds the lock (untimed), releases it (its
   * lease revoked), then the destination acquires it (a lease granted, a create-if-absent txn).
   * Timed: release start → acquire done; and the lock free, release done → acquire done.
   */
  async lockHandoff(record: (series: string, us: number) => void): Promise<void> {
    const key = '/bench-floor/lock/vm-disk';
    const held = this.lockSource.lock(key).ttl(TTL_SECONDS).options(deadline());
    await held.acquire();
    const t0 = nowUs();
    await held.release();
    const t1 = nowUs();
    const taken = this.lockDestination.lock(key).ttl(TTL_SECONDS).options(deadline());
    await taken.acquire();
    const t2 = nowUs();
    await taken.release();
    record('lock.handoff', t2 - t0);
    record('lock.free', t2 - t1);
  }

  async close(): Promise<void> {
    await this.bus.close().catch(() => undefined);
    await this.responder.stop().catch(() => undefined);
    for (const c of [this.etcd, this.lockSource, this.lockDestination]) c.close();
  }
}

type Step = (what: string, fn: () => Promise<void>) => Promise<void>;

/** The whole section: one etcd cluster, one nats-server, one migration cluster for every part. */
export async function measureMigration(opts: MigrationBenchOptions, step: Step, log: (msg: string) => void): Promise<MigrationResults> {
  const hosts = Array.from({ length: opts.hosts }, (_, i) => `host-${i + 1}`);
  const out: MigrationResults = { etcdMembers: 3, hosts: opts.hosts };
  const servers = await Promise.allSettled([EtcdCluster.start({ members: 3 }), NatsServer.start({ jetstream: true })]);
  if (servers.some((s) => s.status === 'rejected')) {
    await Promise.all(servers.map((s) => (s.status === 'fulfilled' ? s.value.close() : undefined)));
    throw (servers.find((s) => s.status === 'rejected') as PromiseRejectedResult).reason;
  }
  const [etcd, nats] = [(servers[0] as PromiseFulfilledResult<EtcdCluster>).value, (servers[1] as PromiseFulfilledResult<NatsServer>).value];
  let mc: MigrationCluster | undefined;
  let rig: FloorRig | undefined;
  try {
    const coordLog = countingLog();
    let saves: SaveTimes = new Map();
    let coordinator: Coordinator | undefined;
    await step(`start ${hosts.length} agents (sim VMs), a coordinator, the floor's responder`, async () => {
      mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], hosts, ttlSeconds: TTL_SECONDS });
      // The coordinator's default step deadlines (5 s, 60 s for the send), not the fixture's
      // shorter test ones: the bench measures the product as it ships.
      const fixture = mc.coordinatorConfig('bench-coord');
      const service = await CoordinatorService.start({ config: CoordinatorConfigSchema.parse({ id: fixture.id, etcd: fixture.etcd, nats: fixture.nats, http: fixture.http }), log: coordLog.log });
      mc.coordinators.push(service);
      coordinator = (await mc.leader()).coordinator;
      saves = timeSaves(coordinator.store);
      rig = await FloorRig.start(etcd.endpoints, nats.url);
    });
    if (!mc || !coordinator || !rig) return out;
    const cluster = mc;
    const c = coordinator;
    const floorRig = rig;
    const logs = (): EventLogs => new EventLogs(cluster);

    if (opts.handoffs > 0) await step(`handoff: ${opts.handoffs} sequential migrations ${hosts[0]} ⇄ ${hosts[1]}, interleaved with the floor and the etcd3 Lock handoff (${opts.floorIterations} each, ${opts.rounds} rounds)`, async () => {
      const vm = await cluster.startVm(hosts[0]!, 'handoff-vm', ['handoff-vm.img']);
      const disk = cluster.disk('handoff-vm.img');
      await waitFor(() => checkDisk(disk).length > 0, { what: 'the handoff VM writing', deadlineMs: 10_000 });
      let here = hosts[0]!;
      const timed: MigrationRecord[] = [];
      let notDone = 0;
      const counters: EtcdCounters = { received: {}, proposals: 0, puts: 0, deletes: 0 };
      const migrate = async (keep: boolean): Promise<void> => {
        const to = here === hosts[0] ? hosts[1]! : hosts[0]!;
        const record = await migrateOnce(cluster, c, vm.uuid, to);
        if (record.phase !== 'done') {
          notDone++;
          log(`handoff migration ${record.id} ended ${record.phase}: ${JSON.stringify(record.timeline)}`);
        } else here = to;
        if (keep) timed.push(record);
      };
      const ignore = (): void => undefined;
      const samples = new Map<string, number[]>();
      const keepSample = (series: string, us: number): void => {
        const s = samples.get(series) ?? [];
        s.push(us);
        samples.set(series, s);
      };
      // Untimed warm-up of each loop (JIT, connections, the first VM process spawns).
      for (let i = 0; i < 4; i++) await migrate(false);
      for (let i = 0; i < 50; i++) await floorRig.floor(ignore);
      for (let i = 0; i < 50; i++) await floorRig.lockHandoff(ignore);
      // Interleaved rounds (as stats.ts runInterleaved), so drift touches every series alike.
      const perRound = (n: number): number => Math.ceil(n / opts.rounds);
      for (let r = 0; r < opts.rounds; r++) {
        await migrate(false);
        // etcd's counters around the timed migrations only: what one migration asks of etcd.
        const before = await scrapeMembers(etcd.endpoints);
        for (let i = 0; i < perRound(opts.handoffs); i++) await migrate(true);
        const d = countersDelta(before, await scrapeMembers(etcd.endpoints));
        for (const [m, n] of Object.entries(d.received)) counters.received[m] = (counters.received[m] ?? 0) + n;
        counters.proposals += d.proposals;
        for (let i = 0; i < 10; i++) await floorRig.floor(ignore);
        for (let i = 0; i < perRound(opts.floorIterations); i++) await floorRig.floor(keepSample);
        for (let i = 0; i < 10; i++) await floorRig.lockHandoff(ignore);
        for (let i = 0; i < perRound(opts.floorIterations); i++) await floorRig.lockHandoff(keepSample);
      }
      const summary = (s: string): Summary => summarize(samples.get(s) ?? []);
      out.floor = { total: summary('floor'), txn: summary('floor.txn'), nats: summary('floor.nats'), range: summary('floor.range') };
      out.lock = { handoff: summary('lock.handoff'), free: summary('lock.free') };

      const l = logs();
      const analysed = timed.filter((rec) => rec.phase === 'done').map((rec) => analyse(rec, l, saves));
      const ok = analysed.filter((a): a is NonNullable<typeof a> => a !== undefined);
      if (ok.length < analysed.length) log(`${analysed.length - ok.length} of ${analysed.length} handoffs lacked an event or a save time; left out`);
      const first = ok[0]?.count ?? { etcdWrites: 0, busMessages: 0, steps: [] };
      out.handoff = {
        migrations: timed.length,
        measured: ok.length,
        notDone,
        criticalPath: summarize(ok.map((a) => a.path)),
        phases: Object.fromEntries(PATH_PHASES.map((p) => [p, summarize(ok.map((a) => a.phases[p]))])) as Record<PathPhase, Summary>,
        path: first,
        pathVariants: [...Map.groupBy(ok, (a) => a.count.steps.join(' → ')).entries()].map(([steps, list]) => ({ steps, n: list.length })),
        whole: summarize(timed.map(wholeUs)),
        perMigration: { txn: received(counters, 'Txn') / timed.length, range: received(counters, 'Range') / timed.length, proposals: counters.proposals / timed.length },
      };
      // The handoff VM goes before the storm: the storm's VMs are the only load then.
      await c.destroyVm(vm.uuid);
      try {
        checkDisk(disk);
      } catch (err) {
        out.handoff.diskViolation = (err as Error).message;
      }
    });

    await step(`storm: ${opts.storm.vms} VMs × ${opts.storm.perVm} migrations among ${hosts.length} hosts, ${opts.storm.vms} in flight`, async () => {
      out.storm = await storm(cluster, c, hosts, opts.storm, saves, coordLog, log);
    });
    return out;
  } finally {
    await rig?.close();
    const stateDirs = mc ? [...mc.agents.values()].map((a) => a.stateDir) : [];
    await mc?.[Symbol.asyncDispose]();
    // The fixture destroys the VMs the drivers reach; an orphaned VM process (a second process of
    // a VM took its sockets) is detached and would outlive the bench: its pid goes too.
    for (const p of vmProcesses(stateDirs)) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await Promise.all([etcd.close(), nats.close()]);
  }
}

/**
 * What a failed storm leaves for a person to read, before the cluster is torn down: per VM that
 * broke a rule, its records (timelines), its event log on every host, its disk, and every agent log
 * line and coordinator warning that names it.
 */
async function keepDiagnostics(
  mc: MigrationCluster,
  vms: { uuid: string; name: string; disk: string; visited: string[] }[],
  records: MigrationRecord[],
  warnings: { atMs: number; fields: object; message: string }[],
  violations: string[],
): Promise<string> {
  const dir = DIAGNOSTICS_DIR;
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'violations.txt'), violations.join('\n') + '\n');
  for (const v of vms.filter((x) => violations.some((m) => m.includes(`${x.name}:`) || m.includes(`${x.name} `) || m.includes(`${x.name}.img`)))) {
    const mine = records.filter((r) => r.vm.uuid === v.uuid);
    const ids = new Set(mine.map((r) => r.id));
    const events = Object.fromEntries([...mc.agents.keys()].map((h) => [h, existsSync(mc.driver(h).eventLog(v.uuid)) ? readFileSync(mc.driver(h).eventLog(v.uuid), 'utf8') : '']));
    const agentLines = Object.fromEntries([...mc.agents].map(([h, a]) => [h, a.json.events().filter((e) => JSON.stringify(e).includes(v.uuid) || [...ids].some((id) => JSON.stringify(e).includes(id)))]));
    const coordinator = warnings.filter((w) => [...ids].some((id) => JSON.stringify(w).includes(id)));
    writeFileSync(join(dir, `${v.name}.json`), JSON.stringify({ vm: v, records: mine, events, agents: agentLines, coordinator }, null, 2));
    writeFileSync(join(dir, `${v.name}.img`), readFileSync(v.disk));
  }
  return dir;
}

/** The sim VM processes whose directory is under one of `stateDirs`, from /proc. */
function vmProcesses(stateDirs: string[]): { pid: number; uuid: string; name: string; host: string }[] {
  const out: { pid: number; uuid: string; name: string; host: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // exited meanwhile
    }
    if (!argv.some((a) => a.endsWith('managed-vm-main.js'))) continue;
    const arg = (flag: string): string => argv[argv.indexOf(flag) + 1] ?? '';
    if (stateDirs.some((d) => arg('--dir').startsWith(`${d}/`))) out.push({ pid: Number(entry), uuid: arg('--uuid'), name: arg('--name'), host: arg('--host') });
  }
  return out;
}

/** A small seeded PRNG (mulberry32): the storm's destinations, random but the same mix each run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function storm(
  mc: MigrationCluster,
  c: Coordinator,
  hosts: string[],
  opts: { vms: number; perVm: number },
  saves: SaveTimes,
  coordLog: ReturnType<typeof countingLog>,
  log: (msg: string) => void,
): Promise<StormResult> {
  // An earlier run's evidence would be taken for this one's.
  rmSync(DIAGNOSTICS_DIR, { recursive: true, force: true });
  const random = prng(0xba7);
  const vms: { uuid: string; name: string; disk: string; visited: string[] }[] = [];
  for (let i = 0; i < opts.vms; i++) {
    const host = hosts[i % hosts.length]!;
    const name = `storm-${i}`;
    const vm = await mc.startVm(host, name, [`${name}.img`]);
    vms.push({ uuid: vm.uuid, name, disk: mc.disk(`${name}.img`), visited: [host] });
  }
  // Every VM has written under its first token before the storm starts.
  await waitFor(() => vms.every((v) => checkDisk(v.disk).length > 0), { what: 'every storm VM writing', deadlineMs: 20_000 });

  const records: MigrationRecord[] = [];
  const violations: string[] = [];
  const broken = { failed: 0, disks: 0, copies: 0, orphans: 0 };
  const retriesBefore = coordLog.retries();
  let inFlight = 0;
  let maxInFlight = 0;
  const cpu0 = cpuTimes();
  const t0 = performance.now();
  let lastDone = t0;
  // One chain per VM: a VM migrates once at a time; the chains run together.
  await Promise.all(
    vms.map(async (v) => {
      for (let k = 0; k < opts.perVm; k++) {
        const here = v.visited.at(-1)!;
        const others = hosts.filter((h) => h !== here);
        const to = others[Math.floor(random() * others.length)]!;
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        try {
          const record = await migrateOnce(mc, c, v.uuid, to);
          records.push(record);
          if (record.phase === 'done') {
            v.visited.push(to);
            lastDone = performance.now();
          }
          else {
            broken.failed++;
            violations.push(`${v.name} ${here} → ${to} ended ${record.phase} (${record.timeline.map((e) => e.phase + (e.error ? `:${e.error}` : '')).join(' ')})`);
          }
        } catch (err) {
          broken.failed++;
          violations.push(`${v.name} ${here} → ${to}: ${(err as Error).message}`);
          // Its record is still open: every later migration of this VM would be refused.
          break;
        } finally {
          inFlight--;
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const machineCpu = (cpuTimes().machineBusy - cpu0.machineBusy) / seconds;

  // S1/S2 on every disk, and each disk's writers in the order the VM visited its hosts.
  let disksChecked = 0;
  for (const v of vms) {
    try {
      const epochs = checkDisk(v.disk);
      disksChecked++;
      let i = 0;
      for (const e of epochs) {
        while (i < v.visited.length && v.visited[i] !== e.host) i++;
        if (i === v.visited.length) throw new Error(`${v.name}: writer on ${e.host} (token ${e.token}) is out of the order it visited ${v.visited.join(' → ')}`);
        i++;
      }
    } catch (err) {
      broken.disks++;
      violations.push((err as Error).message);
    }
  }
  // Every VM runs on exactly one host, the last it was sent to, with no copy left anywhere else.
  const copies = await c.vms();
  for (const v of vms) {
    const mine = copies.filter((x) => x.uuid === v.uuid);
    const want = v.visited.at(-1)!;
    if (mine.length !== 1 || mine[0]!.host !== want || mine[0]!.state !== 'running') {
      broken.copies++;
      violations.push(`${v.name}: copies ${JSON.stringify(mine.map((x) => [x.host, x.state]))}, expected one running on ${want}`);
    }
  }

  // VM processes no host's driver reaches any more (their sockets taken by another process of
  // the same VM): each one a copy that may still run with an old token.
  const reachable = new Set(copies.map((x) => x.pid));
  const suspects = vmProcesses([...mc.agents.values()].map((a) => a.stateDir)).filter((p) => !reachable.has(p.pid));
  // A second look, host by host: a VM slow to answer a list (1 s per VM) is not an orphan.
  const orphans: typeof suspects = [];
  for (const p of suspects) if ((await mc.driver(p.host).find(p.uuid))?.pid !== p.pid) orphans.push(p);
  broken.orphans = orphans.length;
  for (const o of orphans) violations.push(`orphaned VM process ${o.pid} (${o.name} on ${o.host}): unreachable, not destroyed`);
  if (violations.length > 0) {
    // Every record, the stuck ones too (their drive did not end, so `records` lacks them).
    const all = (await c.store.list()).map((s) => s.record);
    log(`storm: ${violations.length} violation(s); diagnostics in ${await keepDiagnostics(mc, vms, all, coordLog.warnings, violations)}`);
  }
  const l = new EventLogs(mc);
  const paths = records
    .filter((r) => r.phase === 'done')
    .map((r) => analyse(r, l, saves))
    .filter((a): a is NonNullable<typeof a> => a !== undefined)
    .map((a) => a.path);
  const done = records.filter((r) => r.phase === 'done').length;
  return {
    vms: opts.vms,
    perVm: opts.perVm,
    hosts: hosts.length,
    migrations: opts.vms * opts.perVm,
    done,
    seconds,
    busySeconds: (lastDone - t0) / 1000,
    perSecond: done / ((lastDone - t0) / 1000),
    maxInFlight,
    disksChecked,
    violations,
    broken,
    retries: coordLog.retries() - retriesBefore,
    whole: summarize(records.map(wholeUs)),
    criticalPath: summarize(paths),
    machineCpu,
  };
}

export const MIGRATION_TARGET = {
  /** Critical path p50 against the floor's p50. */
  vsFloor: 1.5,
  /** Critical path p99, in ms. */
  p99Ms: 20,
};

const ms = (us: number): string => (us / 1000).toFixed(us < 10_000 ? 2 : 1);
const ofQemu = (us: number): string => `${((us / 1000 / QEMU_DOWNTIME_MS) * 100).toFixed(1)}%`;
const times = (a: number, b: number): string => `${(a / b).toFixed(2)}×`;

function latency(name: string, s: Summary, extra: Partial<Row> = {}): Row {
  return { name, n: s.n, p50: s.p50, p99: s.p99, ...extra };
}

/** The section's rows, in the bench's one table. */
export function migrationRows(m: MigrationResults): Row[] {
  const rows: Row[] = [];
  const tag = '[migration]';
  const f = m.floor;
  if (f) {
    rows.push(latency(`${tag} floor: 1 etcd compare-and-put + 2 NATS request/reply`, f.total, { value: `${ms(f.total.p50)} ms`, ratio: 'floor' }));
    rows.push(latency(`${tag}   etcd txn: compare-and-put, record-sized value (${m.etcdMembers} members, any member)`, f.txn, { ratio: `${times(f.txn.p50, f.total.p50)} floor` }));
    rows.push(latency(`${tag}   NATS request/reply, trivial responder in another process (Bus)`, f.nats, { ratio: `${times(f.nats.p50, f.total.p50)} floor` }));
    rows.push(latency(`${tag}   etcd range, linearizable (not in the floor: each read on the path)`, f.range, { ratio: `${times(f.range.p50, f.total.p50)} floor` }));
  }
  const h = m.handoff;
  if (h) {
    const cp = h.criticalPath;
    const vsFloor = f ? cp.p50 / f.total.p50 : Number.NaN;
    const p99Limit = MIGRATION_TARGET.p99Ms * 1000;
    const pass = vsFloor <= MIGRATION_TARGET.vsFloor && cp.p99 <= p99Limit && h.diskViolation === undefined;
    rows.push(
      latency(`${tag} handoff critical path: source VM paused → destination VM running (1 disk; events in whole ms)`, cp, {
        value: `p50 ${ms(cp.p50)} ms = ${ofQemu(cp.p50)} of QEMU's ${QEMU_DOWNTIME_MS} ms; p99 ${ms(cp.p99)} ms = ${ofQemu(cp.p99)}`,
        ratio: `${times(cp.p50, f?.total.p50 ?? Number.NaN)} floor; ${h.migrations - h.notDone}/${h.migrations} done; disk ${h.diskViolation === undefined ? 'S1/S2 held' : `VIOLATED: ${h.diskViolation}`}`,
        target: `≤ ${MIGRATION_TARGET.vsFloor}× floor (p50), p99 ≤ ${MIGRATION_TARGET.p99Ms} ms`,
        result: pass ? 'PASS' : 'MISS',
        checks: [
          { what: 'handoff critical path p50 vs floor p50 (1 etcd txn + 2 NATS round trips)', value: vsFloor, limit: MIGRATION_TARGET.vsFloor, pass: vsFloor <= MIGRATION_TARGET.vsFloor },
          { what: 'handoff critical path p99 (µs)', value: cp.p99, limit: p99Limit, pass: cp.p99 <= p99Limit },
          { what: "S1/S2 violations on the handoff VM's disk", value: h.diskViolation === undefined ? 0 : 1, limit: 0, pass: h.diskViolation === undefined },
        ],
      }),
    );
    const total = PATH_PHASES.reduce((sum, p) => sum + h.phases[p].mean, 0);
    PATH_PHASES.forEach((p, i) => {
      const s = h.phases[p];
      rows.push(latency(`${tag}   ${i + 1}. ${PHASE_LABELS[p]}`, s, { ratio: `mean ${ms(s.mean)} ms, ${((s.mean / total) * 100).toFixed(0)}% of the path` }));
    });
    const pm = h.perMigration;
    rows.push({
      name: `${tag} inside the critical path (record timeline)`,
      n: h.measured,
      value: `${h.path.etcdWrites} etcd writes, ${h.path.busMessages} NATS messages`,
      ratio: `${h.path.steps.join(' → ')}${h.pathVariants.length === 1 ? ' (every migration)' : ` (${h.pathVariants.map((v) => v.n).join(' + ')} migrations had ${h.pathVariants.length} different paths: see results.json)`}; a whole migration: ${pm.txn.toFixed(1)} Txn, ${pm.range.toFixed(1)} Range, ${pm.proposals.toFixed(1)} raft proposals`,
    });
    rows.push(latency(`${tag} whole migration, begun → done (sequential; prepare starts the incoming VM process)`, h.whole));
  }
  const l = m.lock;
  if (l) {
    rows.push(
      latency(`${tag} etcd3 Lock handoff: source release → destination acquire done (peer)`, l.handoff, {
        value: `p50 ${ms(l.handoff.p50)} ms`,
        ratio: `peer; ${f ? `${times(l.handoff.p50, f.total.p50)} floor` : ''}${h ? `, ${times(l.handoff.p50, h.criticalPath.p50)} Baton's path` : ''}`,
      }),
    );
    rows.push(latency(`${tag} etcd3 Lock handoff: lock free (release done → acquire done)`, l.free, { value: `free ${ms(l.free.p50)} ms (p50)`, ratio: "Baton's lease is never free: commit moves it in one txn" }));
  }
  const s = m.storm;
  if (s) {
    const pass = s.done === s.migrations && s.violations.length === 0;
    rows.push({
      name: `${tag} storm: ${s.vms} VMs × ${s.perVm} migrations among ${s.hosts} hosts, ${s.vms} in flight`,
      n: s.done,
      value: `${s.perSecond.toFixed(1)} migrations/s`,
      ratio: `${s.done}/${s.migrations} done, the last after ${s.busySeconds.toFixed(1)} s (all chains ended after ${s.seconds.toFixed(1)} s); ${s.disksChecked} disks checked; violations: ${s.broken.disks} disks (S1/S2), ${s.broken.failed} migrations failed or stuck, ${s.broken.copies} VMs not running once where sent, ${s.broken.orphans} orphaned VM processes; max ${s.maxInFlight} in flight; ${s.retries} steps re-sent; machine ${s.machineCpu.toFixed(2)} CPUs busy`,
      target: 'every migration done, 0 violations',
      result: pass ? 'PASS' : 'MISS',
      checks: [
        { what: 'storm migrations not done', value: s.migrations - s.done, limit: 0, pass: s.done === s.migrations },
        { what: 'storm violations (S1/S2 on disks, copies, failed migrations)', value: s.violations.length, limit: 0, pass: s.violations.length === 0 },
      ],
    });
    rows.push(latency(`${tag} storm: whole migration, begun → done`, s.whole));
    rows.push(latency(`${tag} storm: critical path under load (paused → running)`, s.criticalPath, { value: `p99 ${ms(s.criticalPath.p99)} ms = ${ofQemu(s.criticalPath.p99)} of ${QEMU_DOWNTIME_MS} ms` }));
  }
  return rows;
}

