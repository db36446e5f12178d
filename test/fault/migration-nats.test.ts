import { describe, expect, it } from 'vitest';
import { asBatonError, currentRevision, nextStep, type MigrationRecord } from '@baton/core';
import type { Bus } from '@baton/bus';
import { migrationServers, monoNow, TcpProxy, waitFor } from '../support/index.js';
import {
  type SeenRecord,
  REPLY_DELAY_MS,
  expectSettledVm,
  figure,
  leaseState,
  faultRig,
  writingVm,
} from './migration-kit.js';

/** Live migration across a NATS restart, with agent commands duplicated, reordered and replayed late (kit and the checks every history gets: migration-kit.ts). */
const servers = migrationServers();

// ---------------------------------------------------------------------------------------------
// 3. NATS restarted mid-migration; agent commands duplicated, reordered and replayed late.
// ---------------------------------------------------------------------------------------------

interface AgentCommand {
  label: string;
  subject: string;
  params: { key: NonNullable<ReturnType<typeof nextStep>>['key']; record: MigrationRecord };
}

/**
 * The agent commands the coordinator sent for a migration, rebuilt exactly: for each version of
 * the record that waited for an agent's step, the coordinator sent `{key: nextStep(record).key,
 * record}` on `baton.<cluster>.agent.<host>.migration.<step>` (saga/agent-steps.ts).
 */
function agentCommands(bus: Bus, versions: SeenRecord[]): AgentCommand[] {
  const out = new Map<string, AgentCommand>();
  for (const { record } of versions) {
    const command = nextStep(record);
    if (!command || command.target === 'etcd') continue;
    const label = `${record.id.slice(0, 8)} ${command.step}@${command.key.token} → ${command.host}`;
    out.set(label, { label, subject: bus.subjects.agent(command.host, `migration.${command.step}`), params: { key: command.key, record } });
  }
  return [...out.values()];
}

/** Send each command (concurrently, as a burst of late deliveries would arrive); 'ok' or the refusal's code. */
async function replay(bus: Bus, commands: AgentCommand[]): Promise<Record<string, string[]>> {
  const answers = await Promise.all(
    commands.map((c) =>
      bus.request(c.subject, c.params, { timeoutMs: 10_000 }).then(
        () => [c.label, 'ok'] as const,
        (err: unknown) => [c.label, asBatonError(err).code] as const,
      ),
    ),
  );
  const out: Record<string, string[]> = {};
  for (const [label, code] of answers) (out[label] ??= []).push(code);
  return out;
}

/** Each command twice, the second round in reverse order: duplicated and reordered. */
function duplicatedAndReordered(commands: AgentCommand[]): AgentCommand[] {
  return [...commands, ...[...commands].reverse()];
}

describe('NATS restarted mid-migration; agent commands duplicated, reordered, replayed late', () => {
  // The file's own NATS server (migrationServers), which these tests restart.

  it(
    'NATS down mid-send and restarted at commit costs only time; every earlier command replayed afterwards, duplicated and reordered, is refused STALE_TOKEN and changes nothing',
    async () => {
      // The coordinator reaches NATS through a link the test can hold and cut (the agents directly).
      await using natsLink = await TcpProxy.start({ target: { port: servers.nats.port } });
      await using rig = await faultRig(
        { etcd: servers.etcd.endpoints, nats: [servers.nats.url] },
        { overrides: { sendTimeoutMs: 3_000, nats: { servers: [`nats://${natsLink.hostPort}`] } } },
      );
      const { mc, coordinator, conn, watch } = rig;
      const vm = await writingVm(rig, 'host-a', 'n1', ['n1-root.img', 'n1-data.img']);
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_000 });

      // M1: NATS goes down while the source sends, and stays down until the coordinator has given
      // up waiting for the perform's reply (it went nowhere): then it comes back on the same port.
      const m1 = await coordinator.migrate({ vm: 'n1', to: 'host-b' });
      await watch.phase(m1.id, 'performing');
      await waitFor(async () => (await mc.driver('host-a').find(vm.uuid))?.state === 'paused', { what: 'n1 paused for the send', deadlineMs: 5_000, intervalMs: 5 });
      const down = monoNow();
      await servers.nats.stop();
      await waitFor(() => coordinator.said().some((l) => l.startsWith(`perform of migration ${m1.id} did not go through`)), { what: 'the coordinator to give the perform up', deadlineMs: 10_000 });
      await servers.nats.start();
      const outageMs = monoNow() - down;
      const r1 = await watch.settled(m1.id, 30_000);
      expect(r1.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1], 'host-b');
      figure('F-mig-3 NATS down mid-send', {
        outcome: r1.phase,
        outageMs: Math.round(outageMs),
        migrationMs: Math.round(r1.timeline.at(-1)!.atMs - r1.timeline[0]!.atMs),
        stepsSentAgain: coordinator.said().filter((l) => l.includes('sending it again')).map((l) => l.split(' of migration')[0]),
      });

      await using bus = await mc.connectBus('replayer');
      const m1Commands = agentCommands(bus, watch.versions(m1.id));
      expect(m1Commands.map((c) => c.params.key.step)).toEqual(['prepare', 'perform', 'resume', 'confirm']);
      const leasesBefore = await leaseState(conn, r1);

      // Right after M1: prepare and perform carry revisions older than the commit; resume and
      // confirm carry the commit itself, but M1 has ended and waits for nothing: all refused.
      const afterM1 = await replay(bus, duplicatedAndReordered(m1Commands));
      figure('F-mig-3 late commands after the migration ended', { answers: afterM1 });
      expect(afterM1).toEqual(Object.fromEntries(m1Commands.map((c) => [c.label, ['STALE_TOKEN', 'STALE_TOKEN']])));
      expect(await leaseState(conn, r1)).toEqual(leasesBefore);
      await expectSettledVm(mc, conn, vm, [r1], 'host-b');

      // M2 moves the VM back, NATS restarted (stop, start) while resume's answer is on its way;
      // then every command of M1 and M2 arrives late: every one is refused, whatever its order.
      // Resume goes before `committed` is saved: the coordinator's replies are delayed, so that
      // its answer cannot arrive before the test sees `committed`, and held from then; the
      // restart loses it (the link's connections go with the server's), and the coordinator sends
      // resume again to a VM that already runs.
      natsLink.toClient.delay(REPLY_DELAY_MS);
      const m2 = await coordinator.migrate({ vm: 'n1', to: 'host-a' });
      await watch.on((r) => r.id === m2.id && r.phase === 'committed', () => natsLink.toClient.pause(), 'committed');
      const restartedAt = monoNow();
      natsLink.cut();
      await servers.nats.restart();
      natsLink.heal();
      const restartMs = monoNow() - restartedAt;
      const r2 = await watch.settled(m2.id, 30_000);
      expect(r2.phase).toBe('done');
      expect(coordinator.said().filter((l) => l.startsWith(`resume of migration ${m2.id} did not go through`)), 'resume sent again').not.toEqual([]);
      figure('F-mig-3 NATS restarted at commit', {
        outcome: r2.phase,
        restartMs: Math.round(restartMs),
        migrationMs: Math.round(r2.timeline.at(-1)!.atMs - r2.timeline[0]!.atMs),
        stepsSentAgain: coordinator.said().filter((l) => l.includes(`of migration ${m2.id}`) && l.includes('sending it again')).map((l) => l.split(' of migration')[0]),
      });
      const m2Commands = agentCommands(bus, watch.versions(m2.id));
      const late = [...m1Commands, ...m2Commands];
      const leasesAfterM2 = await leaseState(conn, r2);
      const afterM2 = await replay(bus, duplicatedAndReordered(late));
      figure('F-mig-3 late commands after the VM moved on', { answers: afterM2 });
      expect.soft(afterM2, 'every late command refused STALE_TOKEN').toEqual(Object.fromEntries(late.map((c) => [c.label, ['STALE_TOKEN', 'STALE_TOKEN']])));
      // Whatever the answers, nothing may have changed.
      expect(await leaseState(conn, r2)).toEqual(leasesAfterM2);
      await expectSettledVm(mc, conn, vm, [r1, r2], 'host-a');
    },
    90_000,
  );

  it(
    'commands of closed migrations arriving during a later migration’s send are refused STALE_TOKEN, and its own steps with a revision it never wrote INVALID_REQUEST; neither copy is touched',
    async () => {
      await using rig = await faultRig({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
      const { mc, coordinator, conn, watch } = rig;
      await using bus = await mc.connectBus('replayer');
      const vm = await writingVm(rig, 'host-a', 'n2', ['n2-root.img']);
      const m1 = await coordinator.migrate({ vm: 'n2', to: 'host-b' });
      const r1 = await watch.settled(m1.id);
      const m2 = await coordinator.migrate({ vm: 'n2', to: 'host-a' });
      const r2 = await watch.settled(m2.id);
      expect([r1.phase, r2.phase]).toEqual(['done', 'done']);
      // The last steps of M1 and M2 (resume, confirm), as a deposed leader or a slow network could
      // still deliver them: each names a host that is a party to M3.
      const late = [...agentCommands(bus, watch.versions(m1.id)), ...agentCommands(bus, watch.versions(m2.id))].filter((c) => c.params.key.step === 'resume' || c.params.key.step === 'confirm');

      // M3, host-a → host-b, with a slow send: the source copy sits paused at switchover, the
      // destination's incoming copy waits; the late commands arrive now.
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_500 });
      const m3 = await coordinator.migrate({ vm: 'n2', to: 'host-b' });
      await watch.phase(m3.id, 'performing');
      await waitFor(async () => (await mc.copies(vm.uuid))['host-a'] === 'paused', { what: 'n2 paused for the send', deadlineMs: 5_000, intervalMs: 5 });
      // An agent handles a VM's commands one at a time: those for host-a are taken after the
      // send, while the source copy is paused with its state sent, the riskiest moment for a
      // confirm (destroy the copy that does not run) or a resume (unpause it).
      // And commands that no coordinator sent: M3's own steps that destroy or run a copy, carrying
      // a revision M3 has not written (a discard like this once destroyed the incoming copy mid-send).
      const sending = watch.latest(m3.id)!;
      const ahead = (['discard', 'resume', 'confirm', 'restore'] as const).map((step) => {
        const host = step === 'discard' || step === 'resume' ? sending.destination : sending.source;
        const key = { migration: sending.id, step, token: currentRevision(sending) + 1_000 };
        return { label: `${sending.id.slice(0, 8)} ${step}@${key.token} → ${host}`, subject: bus.subjects.agent(host, `migration.${step}`), params: { key, record: sending } };
      });
      const answers = await replay(bus, [...late, ...ahead]);
      figure('F-mig-3 late commands during a later send', { answers, phaseWhenAnswered: watch.latest(m3.id)!.phase });
      expect.soft(answers, 'every command of a closed migration refused STALE_TOKEN, every one ahead of the record INVALID_REQUEST').toEqual({
        ...Object.fromEntries(late.map((c) => [c.label, ['STALE_TOKEN']])),
        ...Object.fromEntries(ahead.map((c) => [c.label, ['INVALID_REQUEST']])),
      });

      const r3 = await watch.settled(m3.id, 20_000);
      expect(r3.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1, r2, r3], 'host-b');
    },
    60_000,
  );
});

