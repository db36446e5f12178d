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
import { CoordinatorConfigSchema, CoordinatorService, type Coordinator } from '@baton/coordinator';
import { checkDisk, EtcdCluster, MigrationCluster, NatsServer, waitFor } from '../support/index.js';
import { countersDelta, received, type EtcdCounters } from './etcd-metrics.js';
import { summarize, type Summary } from './stats.js';
import type { Step } from './table.js';
import { FloorRig, scrapeMembers } from './migration-floor.js';
import { EventLogs, PATH_PHASES, type PathPhase, analyse } from './migration-path.js';
import { type MigrationBenchOptions, type MigrationResults, TTL_SECONDS, countingLog, migrateOnce, wholeUs } from './migration-rig.js';
import { storm, vmProcesses } from './migration-storm.js';

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
    let coordinator: Coordinator | undefined;
    await step(`start ${hosts.length} agents (sim VMs), a coordinator, the floor's responder`, async () => {
      mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], hosts, ttlSeconds: TTL_SECONDS });
      // The coordinator's default step deadlines (5 s, 60 s for the send), not the fixture's
      // shorter test ones: the bench measures the product as it ships.
      const fixture = mc.coordinatorConfig('bench-coord');
      const service = await CoordinatorService.start({ config: CoordinatorConfigSchema.parse({ id: fixture.id, etcd: fixture.etcd, nats: fixture.nats, http: fixture.http }), log: coordLog.log });
      mc.coordinators.push(service);
      coordinator = (await mc.leader()).coordinator;
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
      const analysed = timed.filter((rec) => rec.phase === 'done').map((rec) => analyse(rec, l));
      const ok = analysed.filter((a): a is NonNullable<typeof a> => a !== undefined);
      if (ok.length < analysed.length) log(`${analysed.length - ok.length} of ${analysed.length} handoffs lacked an event; left out`);
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
      out.storm = await storm(cluster, c, hosts, opts.storm, coordLog, log);
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
