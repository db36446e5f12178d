// Baton's benchmark: `npm run bench` (after the build), or `node test/dist/bench/main.js [flags]`.
//
//   --quick      fewer iterations (a smoke run; the 10,000-lock scale bench keeps its size)
//   --disk       put the agents' state and lock dirs on the disk (os.tmpdir()) instead of
//                /dev/shm; the "other storage" diagnostic row then shows tmpfs
//   --cpu-prof   run the latency agent under `node --cpu-prof`; the profile lands in the
//                bench's temp dir, which is then kept (its path is printed)
//   --agent-log-level=<level>   the agents' log level (default info, as the agent's default
//                config); `warn` shows what the per-grant log lines cost
//   --only <sections>   run only these sections, comma-separated: floors, latency (with the
//                throughput and syscall lines), scale, cluster (etcd leases), migration (live
//                migration's handoff and two migration storms); default all
//
// It prints one table and writes the same, with every raw figure, to test/dist/bench/results.json.
// Benchmarks report; they do not gate: the exit status is 0 even when a target is missed.
// See docs/benchmarks.md for what each line measures.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EtcdServer } from '../support/index.js';
import { ClusterRig, CLUSTER_TTL_SECONDS } from './cluster.js';
import { measureReclaim } from './cluster-reclaim.js';
import { measureClusterScale } from './cluster-scale.js';
import { measureFloors, type FloorResults } from './floors.js';
import { measureMigration } from './migration.js';
import { MIGRATION_TARGET, migrationRows } from './migration-rows.js';
import { type MigrationResults } from './migration-rig.js';
import { DIAGNOSTIC_KEYS, diagnosticLabel, LatencyRig, type Placement, type PlacementResults } from './latency.js';
import { measureScale, type MemoryResult, type ReexecResult } from './scale.js';
import { affinity, allCpus, cpuTimes, machineInfo, pin } from './sys.js';
import { countSyscalls, straceAvailable, type SyscallResult } from './syscalls.js';
import { measureThroughput, type ThroughputResult } from './throughput.js';
import { formatMarkdown, formatTable, latencyRow, times, type Row, type Step } from './table.js';
import { CLUSTER_TARGET, clusterRows, type ClusterResults } from './cluster-rows.js';

const SECTIONS = ['floors', 'latency', 'scale', 'cluster', 'migration'] as const;
type Section = (typeof SECTIONS)[number];
const LOG_LEVEL_FLAG = '--agent-log-level=';
const USAGE = `flags: --quick --disk --cpu-prof --agent-log-level=<level> --only <${SECTIONS.join('|')}>[,…]`;

function parseArgs(argv: string[]): { flags: Set<string>; logLevel: string; only: Set<Section> } {
  const flags = new Set<string>();
  let logLevel = 'info';
  let only: Set<Section> | undefined;
  const bad = (msg: string): never => {
    process.stderr.write(`${msg}; ${USAGE}\n`);
    process.exit(2);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (['--quick', '--disk', '--cpu-prof'].includes(a)) flags.add(a);
    else if (a.startsWith(LOG_LEVEL_FLAG)) logLevel = a.slice(LOG_LEVEL_FLAG.length);
    else if (a === '--only' || a.startsWith('--only=')) {
      const list = a === '--only' ? argv[++i] : a.slice('--only='.length);
      if (!list) bad('--only needs a section list');
      only ??= new Set();
      for (const name of list!.split(',')) {
        if (!(SECTIONS as readonly string[]).includes(name)) bad(`unknown section ${name}`);
        only.add(name as Section);
      }
    } else bad(`unknown flag ${a}`);
  }
  return { flags, logLevel, only: only ?? new Set(SECTIONS) };
}

const ARGS = parseArgs(process.argv.slice(2));
const QUICK = ARGS.flags.has('--quick');
const DISK = ARGS.flags.has('--disk');
const PROFILE = ARGS.flags.has('--cpu-prof');
/** The agents' log level: `info` (the default config) unless a diagnostic run asks otherwise. */
const AGENT_LOG_LEVEL = ARGS.logLevel;
const ONLY = ARGS.only;

const N = QUICK
  ? { latency: 2_000, rounds: 4, warmup: 200, sync: 20_000, async: 2_000, tpSeconds: 0.5, reexec: 2, straceCycles: 500 }
  : { latency: 20_000, rounds: 5, warmup: 1_000, sync: 200_000, async: 20_000, tpSeconds: 2, reexec: 5, straceCycles: 2_000 };
const SCALE = { owners: 100, perOwner: 100 };
/** The cluster section: one etcd member on loopback (data on /dev/shm), 64 in flight, a 2 s TTL for reclaim, 100 simulated hosts. */
const CLUSTER = QUICK
  ? { latency: 1_000, rounds: 4, warmup: 100, tpRounds: 2, tpSecondsPerRound: 0.5, tpWarmupSeconds: 0.2, reclaimTrials: 3, scaleWindowPeriods: 4 }
  : { latency: 10_000, rounds: 5, warmup: 500, tpRounds: 6, tpSecondsPerRound: 0.5, tpWarmupSeconds: 0.2, reclaimTrials: 10, scaleWindowPeriods: 10 };
const CLUSTER_FIXED = { inFlight: 64, reclaimTtlSeconds: 2, reclaimPollMs: 5, scaleHosts: 100, scaleLeases: [10, 100], scaleTtlSeconds: 3 };
const THROUGHPUT = { connections: 8, perConnection: 8 };
/**
 * The migration section: three etcd members on loopback, 5 agent hosts with sim VMs. The storms
 * (20 VMs × 10 migrations, 20 asked at once: all in flight, then held by the default limits) keep
 * their size under --quick.
 */
const MIGRATION = {
  hosts: 5,
  ...(QUICK ? { handoffs: 60, rounds: 4, floorIterations: 300 } : { handoffs: 300, rounds: 5, floorIterations: 2_000 }),
  storm: { vms: 20, perVm: 10 },
};

const CPUS = allCpus();
const PLACEMENTS: Placement[] = [
  { name: 'unpinned', describe: `every process free to run on CPUs ${CPUS}`, client: CPUS, servers: CPUS },
  // Pinning apart needs two CPUs; on a one-CPU machine only the unpinned placement runs.
  ...(CPUS.includes(',')
    ? [
        { name: 'apart', describe: 'servers (echo, agents, redis) on CPU 0, the bench process (clients) on CPU 1', client: '1', servers: '0' },
        { name: 'together', describe: 'servers and the bench process all on CPU 1', client: '1', servers: '1' },
      ]
    : []),
];

const TARGET = {
  vsEcho: 1.5,
  vsRedis: 0.6,
  bytesPerLock: 1024,
  reexecUs: 1_000_000,
};

function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

interface Results {
  floors?: FloorResults;
  latency: Record<string, PlacementResults>;
  throughput?: ThroughputResult;
  syscalls?: SyscallResult;
  memory?: MemoryResult;
  reexec?: ReexecResult;
  cluster?: ClusterResults;
  migration?: MigrationResults;
  errors: string[];
}

/** The slowest run's phases: snapshot (old image) / boot+adopt (new image) / first reply. */
function phases(x: ReexecResult): string {
  const i = x.samplesMs.indexOf(Math.max(...x.samplesMs));
  const p = x.phasesMs[i];
  return p && [p.snapshot, p.boot, p.firstReply].every(Number.isFinite) ? `${p.snapshot}+${p.boot}+${p.firstReply} ms` : '';
}

function buildRows(r: Results): Row[] {
  const rows: Row[] = [];
  if (r.floors) {
    const f = r.floors;
    rows.push(latencyRow('fcntl OFD lock+unlock byte 0 (N-API, in-process)', f.ofd, { ratio: 'floor' }));
    rows.push(latencyRow('fcntl POSIX lock+unlock byte 0 (N-API)', f.posix, { ratio: `${times(f.posix.p50, f.ofd.p50)} OFD` }));
    rows.push(latencyRow('fs-ext async fcntl lock+unlock (whole file)', f.fsExt, { ratio: `${(f.fsExt.p50 / f.ofd.p50).toFixed(0)}× OFD` }));
  }
  for (const p of PLACEMENTS) {
    const l = r.latency[p.name];
    if (!l) continue;
    const tag = `[${p.name}]`;
    const echo = l.echo.p50;
    const vsEcho = l['grant.acquire'].p50 / echo;
    const vsRedis = l['grant.acquire'].p50 / l['redis.acquire'].p50;
    const pass = vsEcho <= TARGET.vsEcho && vsRedis <= TARGET.vsRedis;
    rows.push(latencyRow(`${tag} NDJSON echo round trip (floor)`, l.echo, { ratio: 'floor' }));
    rows.push(latencyRow(`${tag} agent hello (line client)`, l['raw.hello'], { ratio: `${times(l['raw.hello'].p50, echo)} echo` }));
    rows.push(
      latencyRow(`${tag} grant: acquire (AgentClient)`, l['grant.acquire'], {
        ratio: `${vsEcho.toFixed(2)}× echo, ${vsRedis.toFixed(2)}× redis`,
        target: `≤ ${TARGET.vsEcho}× echo, ≤ ${TARGET.vsRedis}× redis`,
        result: pass ? 'PASS' : 'MISS',
        checks: [
          { what: `${tag} grant p50 vs echo p50`, value: vsEcho, limit: TARGET.vsEcho, pass: vsEcho <= TARGET.vsEcho },
          { what: `${tag} grant p50 vs redis SET NX p50`, value: vsRedis, limit: TARGET.vsRedis, pass: vsRedis <= TARGET.vsRedis },
        ],
      }),
    );
    rows.push(latencyRow(`${tag} grant: acquire+release (AgentClient)`, l['grant.cycle'], { ratio: `${times(l['grant.cycle'].p50, l['redis.cycle'].p50)} redlock a+r` }));
    rows.push(latencyRow(`${tag} grant: acquire (line client)`, l['raw.acquire'], { ratio: `${times(l['raw.acquire'].p50, echo)} echo` }));
    rows.push(latencyRow(`${tag} grant: acquire+release (line client)`, l['raw.cycle'], { ratio: `${times(l['raw.cycle'].p50, echo)} echo` }));
    for (const key of DIAGNOSTIC_KEYS) {
      const s = l[`${key}.acquire`];
      if (s) rows.push(latencyRow(`${tag} grant: acquire (line client; ${diagnosticLabel(key, DISK)})`, s, { ratio: `${times(s.p50, echo)} echo` }));
    }
    rows.push(latencyRow(`${tag} redlock: SET NX PX (ioredis)`, l['redis.acquire'], { ratio: `${times(l['redis.acquire'].p50, echo)} echo` }));
    rows.push(latencyRow(`${tag} redlock: SET NX PX + Lua release`, l['redis.cycle'], { ratio: `${times(l['redis.cycle'].p50, echo)} echo` }));
  }
  if (r.throughput) {
    const t = r.throughput;
    rows.push({
      name: `throughput: ${t.inFlight} in flight / ${t.connections} conns, acquire+release`,
      n: t.grants,
      value: `${Math.round(t.grantsPerSecond).toLocaleString('en-US')} grants/s`,
      ratio: `agent ${(t.agentCpu * 100).toFixed(0)}% CPU, clients ${(t.clientCpu * 100).toFixed(0)}%`,
    });
  }
  if (r.syscalls) {
    const sc = r.syscalls;
    // The event loop's own waits (epoll, futex) are not the grant's work.
    const top = Object.entries(sc.perCycle)
      .filter(([name]) => !/^(epoll_|futex)/.test(name))
      .slice(0, 5)
      .map(([name, n]) => `${name} ${n}`)
      .join(', ');
    rows.push({
      name: 'syscalls per acquire+release (strace -c)',
      n: sc.cycles,
      value: `${sc.totalPerCycle.toFixed(1)} per cycle`,
      ratio: `fsync ${sc.fsyncs}/${sc.cycles} grants; ${top}`,
      target: 'no fsync per grant',
      result: sc.fsyncPerGrant < 0.01 ? 'PASS' : 'MISS',
      checks: [{ what: 'fsync/fdatasync per grant', value: sc.fsyncPerGrant, limit: 0.01, pass: sc.fsyncPerGrant < 0.01 }],
    });
  }
  if (r.memory) {
    const m = r.memory;
    rows.push({
      name: `memory: ${m.locks.toLocaleString('en-US')} locks, ${m.owners} owners (ΔVmRSS)`,
      n: m.locks,
      value: `${Math.round(m.bytesPerLock)} B/lock`,
      ratio: `marginal ${Math.round(m.marginalBytesPerLock)} B/lock`,
      target: `≤ ${TARGET.bytesPerLock} B/lock`,
      result: m.bytesPerLock <= TARGET.bytesPerLock ? 'PASS' : 'MISS',
      checks: [{ what: 'agent memory per lock (ΔVmRSS / locks)', value: m.bytesPerLock, limit: TARGET.bytesPerLock, pass: m.bytesPerLock <= TARGET.bytesPerLock }],
    });
  }
  if (r.reexec) {
    const x = r.reexec;
    rows.push({
      name: `re-exec adopting ${x.locksAfter.toLocaleString('en-US')} locks (SIGUSR1 → hello)`,
      n: x.runs,
      p50: x.summary.p50,
      p99: x.summary.max,
      value: `max ${(x.summary.max / 1000).toFixed(0)} ms (${phases(x)})`,
      ratio: `${x.locksAfter} held, ${x.ofdLocksAfter} OFD in /proc/locks`,
      target: '≤ 1 s (max)',
      result: x.summary.max <= TARGET.reexecUs && x.locksAfter === SCALE.owners * SCALE.perOwner ? 'PASS' : 'MISS',
      checks: [
        { what: 're-exec with 10,000 locks, slowest run (µs)', value: x.summary.max, limit: TARGET.reexecUs, pass: x.summary.max <= TARGET.reexecUs },
        { what: 'locks still held after re-exec', value: x.locksAfter, limit: SCALE.owners * SCALE.perOwner, pass: x.locksAfter === SCALE.owners * SCALE.perOwner },
      ],
    });
  }
  if (r.cluster) rows.push(...clusterRows(r.cluster));
  if (r.migration) rows.push(...migrationRows(r.migration));
  return rows;
}


/** The local grant: latency per placement, throughput and the syscall count, on one rig. */
async function runLatency(root: string, results: Results, step: Step): Promise<void> {
  const latDir = join(root, 'latency');
  mkdirSync(join(latDir, 'locks'), { recursive: true });
  let rig: LatencyRig | undefined;
  await step('start the echo server, the agents, redis-server', async () => {
    rig = await LatencyRig.start(latDir, join(latDir, 'locks'), {
      logLevel: AGENT_LOG_LEVEL,
      otherStorageRoot: DISK ? '/dev/shm' : tmpdir(),
      ...(PROFILE ? { nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${join(root, 'profile')}`] } : {}),
    });
  });
  if (!rig) return;
  try {
    for (const p of PLACEMENTS) {
      await step(`latency, ${p.name} (${p.describe})`, async () => {
        results.latency[p.name] = await rig!.measure(p, { n: N.latency, rounds: N.rounds, warmup: N.warmup });
      });
    }
    await step('throughput (unpinned)', async () => {
      rig!.place(PLACEMENTS[0]!);
      results.throughput = await measureThroughput(rig!.agent, { ...THROUGHPUT, seconds: N.tpSeconds });
    });
    if (straceAvailable()) {
      await step('syscalls per grant (strace -c, untimed)', async () => {
        results.syscalls = await countSyscalls(rig!.agent, latDir, N.straceCycles);
      });
    } else {
      log('strace not installed: skipping the syscall count (apt-get install strace)');
    }
  } finally {
    pin(process.pid, CPUS);
    await rig.close();
  }
}

/**
 * Cluster leases against one etcd member on loopback, unpinned: latency and throughput against
 * raw etcd and the etcd3 Lock, then dead-host reclaim, then keepalive load with 100 hosts (last,
 * with nothing else talking to etcd).
 */
async function runCluster(root: string, results: Results, step: Step): Promise<void> {
  const c: ClusterResults = { throughput: {} };
  results.cluster = c;
  const dir = join(root, 'cluster');
  mkdirSync(dir, { recursive: true });
  let etcd: EtcdServer | undefined;
  await step('start etcd (one member, loopback)', async () => {
    etcd = await EtcdServer.start();
    c.etcdDataDir = etcd.dataDir;
  });
  if (!etcd) return;
  try {
    let rig: ClusterRig | undefined;
    await step('start the cluster agents (with and without etcd)', async () => {
      rig = await ClusterRig.start(etcd!, dir, { logLevel: AGENT_LOG_LEVEL });
    });
    if (rig) {
      try {
        await step(`cluster latency (fenced acquire vs raw etcd vs etcd3 Lock, TTL ${CLUSTER_TTL_SECONDS} s)`, async () => {
          c.latency = await rig!.latency({ n: CLUSTER.latency, rounds: CLUSTER.rounds, warmup: CLUSTER.warmup });
        });
        const inFlight = CLUSTER_FIXED.inFlight;
        await step(`cluster throughput, ${inFlight} in flight: agent, in-process LeaseTable, raw etcd txns, raw group-committed, etcd3 Lock (interleaved, ${CLUSTER.tpRounds} rounds)`, async () => {
          c.throughput = await rig!.throughput({ inFlight, rounds: CLUSTER.tpRounds, secondsPerRound: CLUSTER.tpSecondsPerRound, warmupSeconds: CLUSTER.tpWarmupSeconds });
        });
      } finally {
        await rig.close();
      }
    }
    await step(`cluster reclaim after host death (TTL ${CLUSTER_FIXED.reclaimTtlSeconds} s, ${CLUSTER.reclaimTrials} trials)`, async () => {
      c.reclaim = await measureReclaim(etcd!, join(dir, 'reclaim'), {
        trials: CLUSTER.reclaimTrials,
        ttlSeconds: CLUSTER_FIXED.reclaimTtlSeconds,
        pollMs: CLUSTER_FIXED.reclaimPollMs,
        logLevel: AGENT_LOG_LEVEL,
      });
    });
    await step(`cluster keepalive load, ${CLUSTER_FIXED.scaleHosts} hosts × ${CLUSTER_FIXED.scaleLeases.join(' then ')} leases`, async () => {
      c.scale = await measureClusterScale(etcd!, {
        hosts: CLUSTER_FIXED.scaleHosts,
        leasesPerHost: CLUSTER_FIXED.scaleLeases,
        ttlSeconds: CLUSTER_FIXED.scaleTtlSeconds,
        windowPeriods: CLUSTER.scaleWindowPeriods,
      });
    });
  } finally {
    await etcd.close();
  }
}

async function main(): Promise<void> {
  const started = new Date();
  const machine = machineInfo();
  // On tmpfs by default, as the test harness: what a grant costs in the agent itself, the same from
  // run to run. On this machine's disk (ext4 without a journal) creating a file gets slower with
  // every file deleted in the last 30 s, so a disk run depends on the disk's recent history; the
  // "other storage" diagnostic row shows the disk in the same run, and --disk moves everything.
  // (No fsync hides in tmpfs: the strace row counts fsync calls whatever the storage.)
  const root = mkdtempSync(join(DISK ? tmpdir() : '/dev/shm', 'baton-bench-'));
  const results: Results = { latency: {}, errors: [] };
  log(`${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, kernel ${machine.kernel}; temp dir ${root}${QUICK ? '; --quick' : ''}`);
  const initialAffinity = affinity(process.pid);
  const cpu0 = cpuTimes();
  const step: Step = async (what, fn) => {
    log(`${what}…`);
    const t0 = performance.now();
    try {
      await fn();
      log(`${what}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    } catch (err) {
      const msg = `${what} failed: ${(err as Error).stack ?? String(err)}`;
      results.errors.push(msg);
      log(msg);
    }
  };

  try {
    if (ONLY.has('floors')) {
      await step('floors (raw fcntl, fs-ext)', async () => {
        results.floors = await measureFloors(root, { nSync: N.sync, nAsync: N.async });
      });
    }

    if (ONLY.has('latency')) await runLatency(root, results, step);

    if (ONLY.has('scale')) {
      const scaleDir = join(root, 'scale');
      mkdirSync(join(scaleDir, 'locks'), { recursive: true });
      await step(`memory and re-exec with ${SCALE.owners * SCALE.perOwner} locks`, async () => {
        const { memory, reexec } = await measureScale(scaleDir, join(scaleDir, 'locks'), { ...SCALE, reexecRuns: N.reexec, logLevel: AGENT_LOG_LEVEL });
        results.memory = memory;
        results.reexec = reexec;
      });
    }

    if (ONLY.has('cluster')) await runCluster(root, results, step);

    if (ONLY.has('migration')) {
      // Its own etcd (three members) and nats-server; everything torn down before it returns.
      await step(`migration (3 etcd members, ${MIGRATION.hosts} hosts with sim VMs, one coordinator in this process)`, async () => {
        results.migration = await measureMigration(MIGRATION, step, log);
      });
    }
  } finally {
    pin(process.pid, initialAffinity);
    if (PROFILE) log(`CPU profile of the latency agent kept in ${join(root, 'profile')}`);
    else await rm(root, { recursive: true, force: true });
  }

  // Other processes on the machine during the run (CI jobs, other tests) make every figure noisier.
  const cpu1 = cpuTimes();
  const wall = (Date.now() - started.getTime()) / 1000;
  const foreignCpu = Math.max(0, cpu1.machineBusy - cpu0.machineBusy - (cpu1.selfAndChildren - cpu0.selfAndChildren)) / wall;
  const rows = buildRows(results);
  const title = `Baton benchmark, ${started.toISOString()}, ${machine.cpus} CPUs ${machine.cpuModel}, Node ${machine.node}, Linux ${machine.kernel}${QUICK ? ' (--quick)' : ''}${DISK ? ' (agent dirs on disk)' : ' (agent dirs on /dev/shm)'}${AGENT_LOG_LEVEL === 'info' ? '' : ` (agent log level ${AGENT_LOG_LEVEL})`}${ONLY.size < SECTIONS.length ? ` (only ${[...ONLY].join(', ')})` : ''}`;
  process.stdout.write(`\n${title}\n\n${formatTable(rows)}\n`);
  if (ONLY.has('latency')) process.stdout.write(`\nPlacements: ${PLACEMENTS.map((p) => `${p.name} = ${p.describe}`).join('; ')}.\n`);
  process.stdout.write('Ratios compare p50s measured in this run, within one placement.\n');
  if (ONLY.has('cluster')) {
    process.stdout.write(
      `[cluster]: one etcd member on loopback, data on ${results.cluster?.etcdDataDir?.startsWith('/dev/shm') ? 'tmpfs (/dev/shm)' : 'disk'}, every process unpinned; latency/throughput sessions TTL ${CLUSTER_TTL_SECONDS} s; ${CLUSTER_FIXED.inFlight} in flight.\n`,
    );
  }
  if (ONLY.has('migration')) {
    process.stdout.write(
      `[migration]: three etcd members and one nats-server on loopback (data on /dev/shm), ${MIGRATION.hosts} agent processes (sim hypervisor), one coordinator in this process, every process unpinned; the handoff migrates one VM with one disk; each storm ${MIGRATION.storm.vms} VMs × ${MIGRATION.storm.perVm}, first with the coordinator's limits raised to ${MIGRATION.storm.vms} (all in flight), then with its default limits.\n`,
    );
  }
  process.stdout.write(`Other processes used ${foreignCpu.toFixed(2)} CPUs on average during the run (${wall.toFixed(0)} s)${foreignCpu > 0.1 ? ': the machine was not quiet, expect noise' : ''}.\n`);
  const misses = rows.flatMap((r) => (r.checks ?? []).filter((c) => !c.pass).map((c) => `MISS  ${c.what}: ${fmt(c.value)} > ${fmt(c.limit)}`));
  if (misses.length > 0) process.stdout.write(`\n*** ${misses.length} target(s) MISSED ***\n${misses.join('\n')}\n`);
  else if (results.errors.length === 0) process.stdout.write('\nEvery target met.\n');
  if (results.errors.length > 0) process.stdout.write(`\n*** ${results.errors.length} bench(es) FAILED to run ***\n${results.errors.map((e) => e.split('\n')[0]).join('\n')}\n`);

  const out = fileURLToPath(new URL('./results.json', import.meta.url));
  writeFileSync(
    out,
    JSON.stringify(
      {
        title,
        date: started.toISOString(),
        machine,
        flags: { quick: QUICK, disk: DISK, cpuProf: PROFILE, agentLogLevel: AGENT_LOG_LEVEL, only: [...ONLY] },
        iterations: { ...N, cluster: { ...CLUSTER, ...CLUSTER_FIXED }, migration: MIGRATION },
        placements: PLACEMENTS,
        targets: { ...TARGET, ...CLUSTER_TARGET, migration: MIGRATION_TARGET },
        wallSeconds: wall,
        foreignCpu,
        rows,
        misses,
        errors: results.errors,
        raw: results,
      },
      null,
      2,
    ) + '\n',
  );
  // The Markdown form of the same table, for docs/benchmarks.md.
  writeFileSync(out.replace(/\.json$/, '.md'), `${title}\n\n${formatMarkdown(rows)}\n`);
  process.stdout.write(`\nresults: ${out} (and results.md)\n`);
}

function fmt(v: number): string {
  return Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(2);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`[bench] ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
