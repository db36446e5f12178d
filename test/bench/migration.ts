// The migration section (--only migration): what a live migration's handoff costs, against a
// three-member etcd and one nats-server on loopback, with agent processes running sim VMs
// (test/support/migration-cluster.ts: the sim hypervisor, one shared storage) and one coordinator
// in this process, as the integration tests run them:
//
//   handoff   sequential migrations of one VM (one disk) back and forth between two hosts. The
//             critical path is read from the VMs' own event logs: the source VM's `paused` (at
//             switchover, inside perform) to the destination VM's `running` (resume). It is split
//             into phases with the record's timeline (the coordinator's monotonic clock, the same
//             host clock as the VMs').
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
import type { MigrationRecord } from '@baton/core';
import { CoordinatorConfigSchema, type Coordinator } from '@baton/coordinator';
import { checkDisk, MigrationCluster, startServers, waitFor } from '../support/index.js';
import { countersDelta, received, scrapeMembers } from './etcd-metrics.js';
import { runInterleaved, Samples, summarize, type Loop, type Summary } from './stats.js';
import type { Step } from './table.js';
import { FloorRig } from './migration-floor.js';
import { PATH_PHASES, type PathPhase, analyseDone } from './migration-path.js';
import { type MigrationBenchOptions, type MigrationResults, TTL_SECONDS, countingLog, migrateOnce, wholeUs } from './migration-rig.js';
import { storm, vmProcesses } from './migration-storm.js';

/** The whole section: one etcd cluster, one nats-server, one migration cluster for every part. */
export async function measureMigration(opts: MigrationBenchOptions, step: Step, log: (msg: string) => void): Promise<MigrationResults> {
  const hosts = Array.from({ length: opts.hosts }, (_, i) => `host-${i + 1}`);
  const servers = await startServers({ etcdCluster: { members: 3 }, nats: { jetstream: true } });
  const { etcdCluster: etcd, nats } = servers;
  const out: MigrationResults = { etcdMembers: etcd.endpoints.length, hosts: opts.hosts, storms: [] };
  // The coordinator's default step deadlines (5 s, 60 s for the send), not the fixture's shorter
  // test ones: the bench measures the product as it ships.
  const productDeadlines = CoordinatorConfigSchema.pick({ stepTimeoutMs: true, sendTimeoutMs: true }).parse({});
  let mc: MigrationCluster | undefined;
  let rig: FloorRig | undefined;
  try {
    const coordLog = countingLog();
    let coordinator: Coordinator | undefined;
    await step(`start ${hosts.length} agents (sim VMs), a coordinator, the floor's responder`, async () => {
      mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], hosts, ttlSeconds: TTL_SECONDS });
      // The storm has every migration it asks for in flight: the limits are raised to it
      // here, and the coordinator with the default limits takes over for the second storm.
      await mc.addCoordinator('bench-coord', coordLog.log, { ...productDeadlines, limits: { perHost: opts.storm.vms, inCluster: opts.storm.vms } });
      coordinator = (await mc.leader()).coordinator;
      rig = await FloorRig.start(etcd.endpoints, nats.url);
    });
    if (!mc || !coordinator || !rig) return out;
    const cluster = mc;
    const c = coordinator;
    const floorRig = rig;

    if (opts.handoffs > 0) await step(`handoff: ${opts.handoffs} sequential migrations ${hosts[0]} ⇄ ${hosts[1]}, interleaved with the floor and the etcd3 Lock handoff (${opts.floorIterations} each, ${opts.rounds} rounds)`, async () => {
      const vm = await cluster.startVm(hosts[0]!, 'handoff-vm', ['handoff-vm.img']);
      const disk = cluster.disk('handoff-vm.img');
      await waitFor(() => checkDisk(disk).length > 0, { what: 'the handoff VM writing', deadlineMs: 10_000 });
      let here = hosts[0]!;
      const timed: MigrationRecord[] = [];
      let notDone = 0;
      // etcd's counters over the timed migrations: what one migration asks of etcd.
      const asked = { txn: 0, range: 0, proposals: 0 };
      const migrate = async (keep: boolean): Promise<void> => {
        const to = here === hosts[0] ? hosts[1]! : hosts[0]!;
        const record = await migrateOnce(cluster, c, vm.uuid, to);
        if (record.phase !== 'done') {
          notDone++;
          log(`handoff migration ${record.id} ended ${record.phase}: ${JSON.stringify(record.timeline)}`);
        } else here = to;
        if (keep) timed.push(record);
      };
      const samples = new Samples();
      const loops: Loop[] = [
        { name: 'floor', iteration: (record) => floorRig.floor(record) },
        { name: 'lock', iteration: (record) => floorRig.lockHandoff(record) },
      ];
      // Untimed warm-up of each loop (JIT, connections, the first VM process spawns).
      for (let i = 0; i < 4; i++) await migrate(false);
      // The migrations take turns with the floor and the Lock in every round, so drift touches
      // every series alike.
      const perRound = (n: number): number => Math.ceil(n / opts.rounds);
      for (let r = 0; r < opts.rounds; r++) {
        await migrate(false);
        const before = await scrapeMembers(etcd.endpoints);
        for (let i = 0; i < perRound(opts.handoffs); i++) await migrate(true);
        const d = countersDelta(before, await scrapeMembers(etcd.endpoints));
        asked.txn += received(d, 'Txn');
        asked.range += received(d, 'Range');
        asked.proposals += d.proposals;
        await runInterleaved(loops, { n: perRound(opts.floorIterations), rounds: 1, warmup: r === 0 ? 50 : 0, chunkWarmup: 10 }, samples);
      }
      const summary = (s: string): Summary => samples.summary(s);
      out.floor = { total: summary('floor'), txn: summary('floor.txn'), nats: summary('floor.nats'), range: summary('floor.range') };
      out.lock = { handoff: summary('lock.handoff'), free: summary('lock.free') };

      const { done, analysed: ok } = analyseDone(timed, cluster);
      if (ok.length < done.length) log(`${done.length - ok.length} of ${done.length} handoffs lacked an event; left out`);
      const first = ok[0]?.count ?? { etcdWrites: 0, busMessages: 0, steps: [] };
      out.handoff = {
        migrations: timed.length,
        measured: ok.length,
        notDone,
        criticalPath: summarize(ok.map((a) => a.path)),
        phases: Object.fromEntries(PATH_PHASES.map((p) => [p, summarize(ok.map((a) => a.phases[p]))])) as Record<PathPhase, Summary>,
        path: first,
        most: { etcdWrites: Math.max(0, ...ok.map((a) => a.count.etcdWrites)), busMessages: Math.max(0, ...ok.map((a) => a.count.busMessages)) },
        pathVariants: [...Map.groupBy(ok, (a) => a.count.steps.join(' → ')).entries()].map(([steps, list]) => ({ steps, n: list.length })),
        whole: summarize(timed.map(wholeUs)),
        perMigration: { txn: asked.txn / timed.length, range: asked.range / timed.length, proposals: asked.proposals / timed.length },
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
      out.storms.push(await storm(cluster, c, hosts, { ...opts.storm, label: 'storm', limitsKind: 'raised' }, coordLog, log));
    });
    await step(`storm again, ${opts.storm.vms} asked at once, with a coordinator that keeps the default limits`, async () => {
      await cluster.closeCoordinator(cluster.coordinators[0]!);
      await cluster.addCoordinator('bench-coord-limited', coordLog.log, productDeadlines);
      const limited = (await cluster.leader()).coordinator;
      out.storms.push(await storm(cluster, limited, hosts, { ...opts.storm, label: 'limited', limitsKind: 'default' }, coordLog, log));
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
    await servers.close();
  }
}
