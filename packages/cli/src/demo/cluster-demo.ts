import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentClient, diskEpochs, readDiskRecords, SimDriver, type SimFaults } from '@baton/agent';
import { asBatonError, BatonError, isSettled, type HostedVm, type MigrationRecord } from '@baton/core';
import { handoffWindowMs, type CoordinatorConfigInput } from '@baton/coordinator';
import { CoordinatorClient } from '../coordinator-client.js';
import type { DemoChild } from './child.js';
import { DemoServer } from './servers.js';
import { say, step, until } from './wait.js';
import { CLI_ENTRY, DemoWorkspace, stopAgent, type DemoAgent } from './workspace.js';

const STEP_DEADLINE_MS = 30_000;
const HOSTS = ['host-a', 'host-b', 'host-c'] as const;
const CLUSTER = 'demo';

const deadline = (): AbortSignal => AbortSignal.timeout(STEP_DEADLINE_MS);

interface Replica {
  id: string;
  child: DemoChild;
  url: string;
  client: CoordinatorClient;
}

/** Every phase a record goes through, printed as it is reached, until it is settled. */
async function follow(replicas: () => Replica[], id: string, onPhase?: (r: MigrationRecord) => void): Promise<MigrationRecord> {
  let shown = 0;
  return until(async () => {
    // Any live replica answers from etcd.
    const record = await Promise.any(replicas().map((r) => r.client.migration(id)));
    const begun = record.timeline[0]!.atMs;
    for (const e of record.timeline.slice(shown)) say(`   +${String(Math.round(e.atMs - begun)).padStart(5)} ms  ${e.phase}${e.error ? `  (after ${e.error})` : ''}`);
    shown = record.timeline.length;
    onPhase?.(record);
    return isSettled(record) && record;
  }, deadline());
}

function summary(record: MigrationRecord): string {
  const window = handoffWindowMs(record);
  const took = record.timeline.at(-1)!.atMs - record.timeline[0]!.atMs;
  return `   ${record.phase} in ${Math.round(took)} ms${window === undefined ? '' : `; handoff window (state sent → destination running): ${window.toFixed(1)} ms`}`;
}

/**
 * The cluster story: etcd and NATS, three hosts sharing one lock directory, two coordinator
 * replicas, sim VMs writing to their disks through the fence guard; live migrations, a failed
 * send, a migration cancelled mid-send, the coordinator leader killed mid-migration, and an
 * intruder that never gets a disk.
 */
export async function runClusterDemo(): Promise<void> {
  await DemoWorkspace.run('cluster-demo', story);
}

async function story(ws: DemoWorkspace): Promise<void> {
  const { dir, images } = ws;
  say(`Baton demo: a cluster on this machine (loopback only). Working directory ${dir}`);

  step(1, 'etcd and NATS start; three agents join as host-a, host-b and host-c; two coordinators campaign');
  const etcd = ws.own(await DemoServer.etcd(join(dir, 'etcd')));
  const nats = ws.own(await DemoServer.nats(join(dir, 'nats')));
  say(`   etcd ${etcd.url}, NATS ${nats.url} (JetStream keeps the migration events)`);
  const agents = new Map<string, DemoAgent>();
  for (const host of HOSTS) {
    const agent = await ws.startAgent(
      host,
      { etcd: { endpoints: [etcd.url], cluster: CLUSTER, ttlSeconds: 4 }, nats: { servers: [nats.url], cluster: CLUSTER }, hypervisor: { driver: 'sim' } },
      deadline(),
    );
    agents.set(host, agent);
    say(`   agent ${host}: pid ${agent.hello.pid}, metrics on 127.0.0.1:${agent.hello.httpPort}`);
  }
  const replicas: Replica[] = [];
  for (const id of ['coord-1', 'coord-2']) {
    const config: CoordinatorConfigInput = {
      id,
      etcd: { endpoints: [etcd.url], cluster: CLUSTER, ttlSeconds: 2 },
      nats: { servers: [nats.url], cluster: CLUSTER },
      http: { host: '127.0.0.1', port: 0 },
    };
    writeFileSync(join(dir, `${id}.json`), JSON.stringify(config, null, 2));
    const child = ws.spawn([CLI_ENTRY, 'coordinator', '--config', join(dir, `${id}.json`)]);
    const serving = await child.event((e) => typeof e.url === 'string', deadline());
    replicas.push({ id, child, url: serving.url as string, client: new CoordinatorClient(serving.url as string) });
  }
  const live = (): Replica[] => replicas.filter((r) => r.child.proc.exitCode === null && r.child.proc.signalCode === null);
  const leader = async (): Promise<Replica> => {
    const status = await until(() => live()[0]!.client.status().then((s) => s.leader !== null && live().some((r) => r.id === s.leader!.id) && s), deadline());
    return replicas.find((r) => r.id === status.leader!.id)!;
  };
  say(`   coordinators ${replicas.map((r) => `${r.id} at ${r.url}`).join(', ')}; ${(await leader()).id} leads (either one serves the dashboard at its address)`);

  step(2, 'Three VMs start, each on its own host; each writes "vm host token seq" to its disks through the fence guard');
  const vms: { name: string; host: string; disks: string[] }[] = [
    { name: 'web-01', host: 'host-a', disks: [ws.disk('web-01-root.img'), ws.disk('web-01-data.img')] },
    { name: 'db-01', host: 'host-b', disks: [ws.disk('db-01.img')] },
    { name: 'cache-01', host: 'host-c', disks: [ws.disk('cache-01.img')] },
  ];
  const started = new Map<string, HostedVm>();
  for (const vm of vms) {
    const hosted = await (await leader()).client.startVm(vm.host, { uuid: randomUUID(), name: vm.name, disks: vm.disks.map((path) => ({ path })) });
    started.set(vm.name, hosted);
    say(`   ${vm.name} runs on ${vm.host} (pid ${hosted.pid}), tokens ${hosted.locks.map((l) => l.token).join(', ')}`);
  }

  step(3, 'An intruder on host-c tries to take web-01’s and db-01’s disks, over and over, for the rest of the demo');
  const intruder = await AgentClient.connect({ socketPath: agents.get('host-c')!.socket });
  await intruder.request('register', { owner: { uuid: randomUUID(), name: 'intruder' } });
  const tries = { attempts: 0, granted: 0, stop: false };
  const targets = [...vms[0]!.disks, ...vms[1]!.disks];
  const intruding = (async () => {
    while (!tries.stop) {
      const name = targets[tries.attempts % targets.length]!;
      tries.attempts++;
      try {
        await intruder.request('acquire', { resources: [{ name }] });
        tries.granted++;
        await intruder.request('release', { resources: [{ name }] });
      } catch (err) {
        if (asBatonError(err).code !== 'RESOURCE_BUSY') throw err;
      }
    }
    // Settled as a value: if the story stops early (interrupted, or a step failed), nobody awaits it.
  })().then(
    () => undefined,
    (err: unknown) => err,
  );

  const migrate = async (vm: string, to: string, onPhase?: (r: MigrationRecord) => void): Promise<MigrationRecord> => {
    const record = await live()[0]!.client.migrate(vm, to);
    say(`   migration ${record.id}: ${vm} ${record.source} → ${to}`);
    const done = await follow(live, record.id, onPhase);
    say(summary(done));
    return done;
  };

  step(4, 'Live migration: web-01 host-a → host-b');
  await migrate('web-01', 'host-b');
  step(5, 'Live migration: db-01 host-b → host-c');
  await migrate('db-01', 'host-c');

  /** Faults for a VM's next sends, through its host's hypervisor as the tests inject them. */
  const inject = async (host: string, uuid: string, faults: SimFaults): Promise<void> => {
    using driver = new SimDriver(agents.get(host)!.stateDir, host);
    await driver.inject(uuid, faults);
  };

  step(6, 'A send that fails: cache-01 host-c → host-a, its migration stream broken on purpose');
  const cache = started.get('cache-01')!;
  await inject('host-c', cache.uuid, { failSends: 1 });
  await migrate('cache-01', 'host-a');
  const where = (await live()[0]!.client.vms()).filter((v) => v.uuid === cache.uuid);
  say(`   cache-01 now: ${where.map((v) => `${v.state} on ${v.host}, token ${v.locks.map((l) => l.token).join(', ')}`).join('; ')} (the source never let go)`);

  step(7, 'An operator cancels a migration in the middle of its send (baton cancel): db-01 host-c → host-a, its send slowed to a minute');
  const db = started.get('db-01')!;
  await inject('host-c', db.uuid, { sendDelayMs: 60_000 });
  const slow = await live()[0]!.client.migrate('db-01', 'host-a');
  say(`   migration ${slow.id}: db-01 host-c → host-a`);
  await until(async () => (await live()[0]!.client.migration(slow.id)).phase === 'performing', deadline());
  await live()[0]!.client.cancel(slow.id);
  say('   cancelled while performing: the incoming copy is destroyed, the send breaks, host-c keeps everything');
  say(summary(await follow(live, slow.id)));
  await inject('host-c', db.uuid, { sendDelayMs: 0 });
  const dbNow = (await live()[0]!.client.vms()).filter((v) => v.uuid === db.uuid);
  say(`   db-01 now: ${dbNow.map((v) => `${v.state} on ${v.host}, token ${v.locks.map((l) => l.token).join(', ')}`).join('; ')} (it never left)`);

  step(8, 'The coordinator leader is killed (SIGKILL) in the middle of a migration: web-01 host-b → host-c, its send slowed to 1.5 s');
  const web = started.get('web-01')!;
  await inject('host-b', web.uuid, { sendDelayMs: 1_500 });
  const doomed = await leader();
  let killed = false;
  await migrate('web-01', 'host-c', (r) => {
    if (killed || r.phase !== 'performing') return;
    killed = true;
    doomed.child.proc.kill('SIGKILL');
    say(`   ${doomed.id} killed while web-01 was being sent; the other replica takes over once ${doomed.id}’s etcd session expires`);
  });
  say(`   ${(await leader()).id} leads now and finished it`);

  step(9, 'The intruder gives up');
  tries.stop = true;
  const intruderFailed = await intruding;
  if (intruderFailed !== undefined) throw intruderFailed;
  await intruder.close();
  say(`   ${tries.attempts} attempts to take a disk of a VM being migrated; granted ${tries.granted} times`);

  step(10, 'Who wrote to each disk, in order (one writer per token, tokens only going up)');
  let problems = 0;
  for (const vm of vms) {
    for (const path of vm.disks) {
      const report = diskEpochs(readDiskRecords(path));
      say(`   ${path.slice(images.length + 1)}: ${report.epochs.map((e) => `${e.host} token ${e.token} ×${e.writes}`).join(' → ')}`);
      for (const p of report.problems) say(`      VIOLATION: ${p}`);
      problems += report.problems.length;
    }
  }
  if (problems > 0 || tries.granted > 0) throw new BatonError('INTERNAL', `the demo saw ${problems} disk violation(s) and ${tries.granted} intruder grant(s)`);

  for (const vm of vms) await (await leader()).client.destroyVm(vm.name);
  for (const r of live()) await r.child.kill('SIGTERM');
  for (const agent of agents.values()) await stopAgent(agent, deadline());
  say('\ndemo finished');
}
