import { describe, expect, it } from 'vitest';
import type { MigrationRecord } from '@baton/core';
import { EtcdCluster, migrationServers, monoNow, TcpProxy, waitFor, within } from '../support/index.js';
import {
  EtcdContender,
  disposer,
  ended,
  expectSettledVm,
  faultRig,
  figure,
  stepEffect,
  writingVm,
} from './migration-kit.js';

/**
 * Live migration with the etcd leader killed around the commit (kit and the checks every history
 * gets: migration-kit.ts), on this file's own servers: a three-member etcd, whose leader the
 * tests kill, and NATS.
 */
const servers = migrationServers({ etcdCluster: { members: 3 }, nats: { jetstream: true } });

// ---------------------------------------------------------------------------------------------
// 4. The etcd leader killed during the commit transaction.
// ---------------------------------------------------------------------------------------------

/** Ample for the test to see the commit applied and cut its answer off, within the coordinator's session TTL (5 s). */
const COMMIT_ANSWER_DELAY_MS = 1_000;
/** The source's send, slowed: perform cannot answer before the test has seen `performing` and held the answer. */
const SEND_DELAY_MS = 300;

type EtcdKill = 'before the commit is sent' | 'after the commit is applied';

/**
 * Migrations of one VM back and forth, the etcd leader SIGKILLed inside each one's commit step
 * (`kill` says where), a direct etcd contender asking for the VM's disks throughout. After each:
 * the migration ended, its history is clean, the member comes back. Returns the figures.
 */
async function etcdLeaderKills(cluster: EtcdCluster, kills: EtcdKill[]): Promise<void> {
  // The coordinator reaches each member, and NATS, through links the test can hold and cut: the
  // kill lands at an exact point of the commit step, whatever the machine's load.
  const links: TcpProxy[] = [];
  await using _links = disposer(() => Promise.all(links.map((l) => l.close())));
  for (const m of cluster.members) links.push(await TcpProxy.start({ target: { port: m.clientPort } }));
  await using natsLink = await TcpProxy.start({ target: { port: servers.nats.port } });
  await using rig = await faultRig(
    { etcd: cluster.endpoints, nats: [servers.nats.url], ttlSeconds: 5 },
    { overrides: { etcd: { endpoints: links.map((l) => `http://${l.hostPort}`) }, nats: { servers: [`nats://${natsLink.hostPort}`] } } },
  );
  const { mc, coordinator, conn, watch } = rig;
  const vm = await writingVm(rig, 'host-a', 'e1', ['e1-root.img', 'e1-data.img']);
  const disks = vm.locks.map((l) => l.resource);
  await using contenderConn = mc.connectEtcd();
  await using contender = await EtcdContender.start(contenderConn, () => disks);

  const records: MigrationRecord[] = [];
  let host = 'host-a';
  for (const kind of kills) {
    const to = host === 'host-a' ? 'host-b' : 'host-a';
    const leader = await cluster.leader();
    const leaderLink = links[cluster.members.indexOf(leader)]!;
    const retriesBefore = coordinator.said().filter((l) => l.startsWith('commit of migration')).length;
    let killedAt = 0;
    const kill = (): void => {
      killedAt = monoNow();
      leader.process!.kill('SIGKILL');
    };
    // The commit goes out when perform's answer arrives: held from the moment `performing` is
    // written, and the source's send slowed so that the answer cannot come before, however loaded
    // the machine.
    await mc.driver(host).inject(vm.uuid, { sendDelayMs: SEND_DELAY_MS });
    const performing = watch.on((r) => r.phase === 'performing' && !records.some((p) => p.id === r.id), () => natsLink.toClient.pause(), 'performing');
    const started = await coordinator.migrate({ vm: 'e1', to });
    const at = await performing;
    await waitFor(stepEffect(mc, conn, at.record).done, { what: 'the state sent', deadlineMs: 10_000, intervalMs: 1 });
    expect(watch.latest(started.id)!.phase, 'the commit not sent before the fault').toBe('performing');
    if (kind === 'before the commit is sent') {
      // The commit meets a cluster that is electing a new leader.
      kill();
      await within(leader.process!.exited, 5_000, `etcd ${leader.memberName} to exit`);
      natsLink.toClient.flow();
    } else {
      // etcd's answers are delayed, then the commit goes. Its transaction saves `sent`: seen, it
      // has been applied, and its answer is still in the delay (a second, ample on a loaded
      // machine; held outright, the commit could not go: the coordinator may read the
      // destination's session first). Cutting every link loses that answer, and the leader dies:
      // the coordinator cannot know whether its commit went through. The other members come back.
      for (const l of links) l.toClient.delay(COMMIT_ANSWER_DELAY_MS);
      const cutAndKilled = watch.on(
        (r) => r.id === started.id && r.phase === 'sent',
        () => {
          for (const l of links) l.cut();
          kill();
        },
        'sent',
      );
      natsLink.toClient.flow();
      await cutAndKilled;
      await within(leader.process!.exited, 5_000, `etcd ${leader.memberName} to exit`);
      for (const l of links) if (l !== leaderLink) l.heal();
    }
    const record = await ended(mc, watch, started.id, 20_000, coordinator.said);
    const newLeader = await cluster.leader();
    records.push(record);
    const commitSentAgain = coordinator.said().filter((l) => l.startsWith('commit of migration')).length - retriesBefore;
    if (kind === 'before the commit is sent') {
      const sent = watch.versions(started.id).find((s) => s.record.phase === 'sent');
      if (sent !== undefined) expect(sent.at, 'the commit applied after the kill').toBeGreaterThan(killedAt);
    } else {
      // The answer was lost: the commit is sent again, recognised as applied, and the VM moves on.
      expect(commitSentAgain, 'the commit sent again after its answer was lost').toBeGreaterThan(0);
      expect(record.phase).toBe('done');
    }
    // Committed → the VM runs on the destination; rolled back → on the source (both are correct).
    host = record.phase === 'done' ? to : host;
    await expectSettledVm(mc, conn, vm, records, host);
    figure('F-mig-4 etcd leader killed', {
      kill: kind,
      killed: leader.memberName,
      newLeader: newLeader.memberName,
      outcome: record.phase,
      commitSentAgain,
      endedAfterKillMs: Math.round(watch.versions(started.id).at(-1)!.at - killedAt),
      timeline: record.timeline.map((e) => e.phase).join(' '),
    });
    // The member comes back (same ports, same data) before the next round, so each round starts
    // from a full cluster and kills a leader of three.
    await leader.start();
    leaderLink.heal();
    await waitFor(async () => (await Promise.all(cluster.members.map((m) => m.status().then(() => true, () => false)))).every(Boolean), { what: 'three healthy members', deadlineMs: 15_000 });
  }
  await within(contender.stop(), 10_000, 'the etcd contender');
  figure('F-mig-4 etcd contender', { attempts: contender.attempts, answers: Object.fromEntries(contender.answers), wins: contender.wins });
  // S6: the handoff never leaves the lease key free, so a grant straight from etcd never succeeds.
  expect(contender.wins).toEqual([]);
  expect(contender.answers.get('RESOURCE_BUSY') ?? 0).toBeGreaterThan(0);
}

describe('etcd leader killed during the commit transaction (3-member etcd)', () => {
  it('killed before the commit is sent: each migration completes or rolls back, S1–S6 hold, a third party asking etcd never wins', () => etcdLeaderKills(servers.etcdCluster, ['before the commit is sent', 'before the commit is sent']), 90_000);

  it('killed after the commit is applied, before the coordinator hears: each migration completes, S1–S6 hold, a third party asking etcd never wins', () => etcdLeaderKills(servers.etcdCluster, ['after the commit is applied', 'after the commit is applied']), 90_000);
});

