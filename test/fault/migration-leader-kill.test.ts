import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  lockFileName,
  migrationRule,
  type HostedVm,
  type MigrationPhase,
  type MigrationRecord,
  type MigrationStep,
} from '@baton/core';
import { MigrationStore } from '@baton/etcd';
import { CoordinatorProcess, TcpProxy, httpJson, MigrationCluster, migrationServers, monoNow, startProbe, waitFor, writtenUnder } from '../support/index.js';
import {
  ClusterWatch,
  REPLY_DELAY_MS,
  disposer,
  electionLine,
  expectSettledVm,
  figure,
  stepEffect,
} from './migration-kit.js';

/** Live migration with the coordinator leader SIGKILLed at each step boundary (kit and the checks every history gets: migration-kit.ts). */
const servers = migrationServers();

// ---------------------------------------------------------------------------------------------
// 1. The coordinator leader SIGKILLed at every step boundary.
// ---------------------------------------------------------------------------------------------

const COORDINATOR_TTL_SECONDS = 2;
const MOVE_AFTER_ELECTION_MS = 3_000;

/**
 * A third process on the shared lock directory taking a disk's lock file (an OFD lock on byte 0,
 * as an agent would) the moment it is free, and keeping it: once the source has dropped its local
 * locks at the send, the destination cannot take them after commit, which is the one way into
 * S5's abort after commit (`returning`).
 */
async function grabLockFile(path: string): Promise<{ held(): boolean; release(): void } & AsyncDisposable> {
  const probe = await startProbe(path, ['--op', 'grab', '--lock-kind', 'ofd']);
  return {
    held: () => probe.events().some((e) => e.event === 'holding'),
    // Synchronous, from a watch hook: the signal is sent now; the lock goes with the process.
    release: () => process.kill(probe.pid, 'SIGTERM'),
    [Symbol.asyncDispose]: () => probe.close(),
  };
}

interface KillFigure {
  migration: string;
  phase: MigrationPhase;
  step: MigrationStep;
  killed: string;
  newLeader: string;
  electedAfterKillMs: number;
  movedAfterElectionMs: number;
  movedTo: MigrationPhase;
}

describe('coordinator leader SIGKILLed at each step boundary (replicas as processes)', () => {
  it(
    'a new leader resumes or rolls back every phase, the record moving again within 3 s of its election',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
      await using etcdLink = await TcpProxy.start({ target: { port: servers.etcd.clientPort } });
      await using natsLink = await TcpProxy.start({ target: { port: servers.nats.port } });
      etcdLink.toClient.delay(REPLY_DELAY_MS);
      natsLink.toClient.delay(REPLY_DELAY_MS);
      const replicas = new Map<string, CoordinatorProcess>();
      await using _replicas = disposer(() => Promise.all([...replicas.values()].map((c) => c.close())));
      for (const id of ['c1', 'c2', 'c3']) {
        const config = mc.coordinatorConfig(id, {
          etcd: { endpoints: [`http://${etcdLink.hostPort}`], ttlSeconds: COORDINATOR_TTL_SECONDS },
          nats: { servers: [`nats://${natsLink.hostPort}`] },
        });
        replicas.set(id, await CoordinatorProcess.start(config));
      }
      await using conn = mc.connectEtcd();
      await using watch = await ClusterWatch.start(conn);
      const any = (): CoordinatorProcess => [...replicas.values()].find((c) => c.running)!;
      await waitFor(async () => (await electionLine(conn)).length === 3, { what: 'three candidacies', deadlineMs: 10_000 });

      const created = await httpJson<HostedVm>(`${any().url}/v1/vms`, {
        method: 'POST',
        body: { host: 'host-a', uuid: randomUUID(), name: 'k1', disks: [{ path: mc.disk('k1-root.img') }, { path: mc.disk('k1-data.img') }] },
        timeoutMs: 10_000,
      });
      expect(created.status).toBe(201);
      const vm = created.body;
      await writtenUnder(mc.disk('k1-root.img'), vm.locks[0]!.token);

      const figures: KillFigure[] = [];
      const migrate = async (to: string): Promise<string> => {
        const res = await httpJson<MigrationRecord>(`${any().url}/v1/migrations`, { method: 'POST', body: { vm: vm.uuid, to }, timeoutMs: 10_000 });
        expect(res.status, JSON.stringify(res.body)).toBe(202);
        return res.body.id;
      };

      /**
       * Once the record is at `phase` and its step has taken effect, SIGKILL the leader (its reply
       * still on the way), restart the replica as a supervisor would, and measure the election and
       * the record's next move. With `resumeSent` (phase `sent`, called before the migration gets
       * there), later in the same phase: resume goes while `committed` is being saved
       * (OVERLAPS_SAVE), and the leader dies once resume has run the VM, before that save lands.
       */
      const killAt = async (id: string, phase: MigrationPhase, { onMoved, resumeSent = false }: { onMoved?: () => void; resumeSent?: boolean } = {}): Promise<void> => {
        // Held from the moment the phase is seen, so that the answer cannot get through however
        // long the checks below take on a loaded machine (the test reads etcd directly, not
        // through the links):
        // - an agent step's answer, on NATS: the leader needs nothing from NATS to send the step;
        //   resume is the exception, sent before `committed` is saved: its answer is in the delay
        //   when `committed` is seen, and held from then;
        // - an etcd step's answer: its transaction carries the save of the record that asks for
        //   it, so the phase becomes visible with the step's effect, its answer in the delay; all
        //   but begin's, whose record the POST saved first: the leader needs that save's answer to
        //   send the step, so begin's answer is held once its effect is seen, within the delay;
        // - with `resumeSent`, the leader's requests to etcd from when the commit is applied (its
        //   answer in the delay): the save that goes with resume cannot land.
        const at = resumeSent
          ? await watch.on((r) => r.id === id && r.phase === phase, () => etcdLink.toTarget.pause(), phase)
          : await watch.phase(id, phase);
        // (With `resumeSent`, resume's answer is held once it has taken effect, below.)
        if (!resumeSent && migrationRule(phase)!.target !== 'etcd') natsLink.toClient.pause();
        else if (!resumeSent && phase !== 'begun') etcdLink.toClient.pause();
        const [leader] = await electionLine(conn);
        const victim = replicas.get(leader!.id)!;
        expect(victim.running, `the leader ${leader!.id} runs`).toBe(true);
        const effect = stepEffect(mc, conn, resumeSent ? { ...at.record, phase: 'committed' } : at.record);
        await waitFor(effect.done, { what: `${effect.step} of ${id.slice(0, 8)} to take effect`, deadlineMs: 10_000, intervalMs: 3 });
        // Every reply to the replicas is held from here until the leader is dead.
        etcdLink.toClient.pause();
        natsLink.toClient.pause();
        const killedAt = monoNow();
        await victim.kill();
        if (resumeSent) {
          // The dead leader's save, held on its way to etcd, goes with its connection (a cut drops
          // what the link holds); the other replicas reconnect.
          etcdLink.cut();
          etcdLink.heal();
          etcdLink.toClient.delay(REPLY_DELAY_MS);
        }
        etcdLink.toClient.flow();
        natsLink.toClient.flow();
        // Read from etcd itself, not the watch, which could still be delivering a last save.
        const stored = (await new MigrationStore(conn).get(id))!.record;
        expect(stored.phase, `the leader died after ${effect.step} took effect and before it saved the result`).toBe(phase);
        await victim.restart();
        const elected = await waitFor(() => watch.candidaciesGone.find((g) => g.key === leader!.key) ?? false, { what: `${leader!.id}'s candidacy to expire`, deadlineMs: 10_000 });
        const newLeader = (await electionLine(conn))[0]!.id;
        const moved = await watch.until(id, (r) => r.timeline.length > stored.timeline.length, 'its next version after the kill', 10_000);
        onMoved?.();
        figures.push({
          migration: id.slice(0, 8),
          phase,
          step: effect.step,
          killed: leader!.id,
          newLeader,
          electedAfterKillMs: Math.round(elected.at - killedAt),
          movedAfterElectionMs: Math.round(moved.at - elected.at),
          movedTo: moved.record.phase,
        });
        expect(moved.record.phase).toBe(migrationRule(phase)!.ok);
      };

      // M1, host-a → host-b: the leader dies in every step of the way to `done`.
      const m1 = await migrate('host-b');
      for (const phase of ['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'confirming'] as const) await killAt(m1, phase);
      const r1 = await watch.settled(m1);
      expect(r1.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1], 'host-b');

      // M2, host-b → host-a with a failing send: the leader dies in every step of the abort before commit.
      await mc.driver('host-b').inject(vm.uuid, { failSends: 1 });
      const m2 = await migrate('host-a');
      for (const phase of ['unmarking', 'discarding', 'restoring'] as const) await killAt(m2, phase);
      const r2 = await watch.settled(m2);
      expect(r2.phase).toBe('aborted');
      expect(r2.timeline.find((e) => e.phase === 'unmarking')?.error).toBe('IO_ERROR');
      await expectSettledVm(mc, conn, vm, [r1, r2], 'host-b');

      // M3, host-b → host-a, where the destination cannot take the disk's lock file after commit:
      // the leader dies while the leases go back (give-back), in the abort after commit.
      const lockDir = realpathSync(mc.storage.lockDir);
      await using grab = await grabLockFile(join(lockDir, lockFileName(r2.resources[0]!.name)));
      const m3 = await migrate('host-a');
      await killAt(m3, 'returning', {
        onMoved: () => {
          expect(grab.held(), 'the third process held the lock file').toBe(true);
          // Let the source re-take its lock file, so the restore can run it again.
          grab.release();
        },
      });
      const r3 = await watch.settled(m3);
      expect(r3.phase).toBe('aborted');
      expect(r3.timeline.map((e) => e.phase)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'returning', 'restoring', 'aborted']);
      expect(r3.timeline.find((e) => e.phase === 'returning')?.error).toBe('RESOURCE_BUSY');
      // S5: the destination never ran it: host-a appears on the disks only before M1.
      const epochs = await expectSettledVm(mc, conn, vm, [r1, r2, r3], 'host-b');
      for (const disk of epochs) expect(disk.map((e) => e.host)).toEqual(['host-a', 'host-b', 'host-b']);

      // M4, host-b → host-a: the leader dies with resume carried out (the VM runs on host-a) and
      // `committed` not saved: etcd still says `sent`. The successor sends the commit again,
      // recognises it as its own, and resumes again a VM that already runs.
      const m4 = await migrate('host-a');
      await killAt(m4, 'sent', { resumeSent: true });
      const r4 = await watch.settled(m4);
      expect(r4.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1, r2, r3, r4], 'host-a');

      for (const f of figures) figure('F-mig-1 leader killed', { ...f });
      const worst = Math.max(...figures.map((f) => f.movedAfterElectionMs));
      figure('F-mig-1 summary', { kills: figures.length, worstMovedAfterElectionMs: worst, replyDelayMs: REPLY_DELAY_MS, coordinatorTtlSeconds: COORDINATOR_TTL_SECONDS });
      expect(figures).toHaveLength(12);
      for (const f of figures) expect(f.movedAfterElectionMs, `${f.phase}: moved ${f.movedAfterElectionMs} ms after ${f.newLeader}'s election`).toBeLessThan(MOVE_AFTER_ELECTION_MS);
    },
    180_000,
  );
});

