import { describe, expect, it } from 'vitest';
import { migrationServers, monoNow, waitFor } from '../support/index.js';
import {
  disposer,
  ended,
  expectSettledVm,
  freezeAt,
  figure,
  leaseState,
  runningEvents,
  faultRig,
  writingVm,
} from './migration-kit.js';

/** Live migration with agents killed or stopped, and a VM process stalled (kit and the checks every history gets: migration-kit.ts). */
const servers = migrationServers();

// ---------------------------------------------------------------------------------------------
// 2. Agents SIGKILLed mid-migration: the source mid-send, the destination after commit.
// ---------------------------------------------------------------------------------------------

describe('agents SIGKILLed mid-migration', () => {
  it(
    'the source agent killed mid-send and restarted: the migration ends with one running copy and clean disks',
    async () => {
      // A 5 s session: the restarted agent finds its session alive and adopts it (a crash, not a host death).
      // The perform the dead agent never answers is sent again after 4 s rather than the fixture's 10.
      await using rig = await faultRig({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 5 }, { overrides: { sendTimeoutMs: 4_000 } });
      const { mc, coordinator, conn, watch } = rig;
      const vm = await writingVm(rig, 'host-a', 's1', ['s1-root.img', 's1-data.img']);
      // A slow send: the VM sits paused at switchover, its state not yet sent, while the agent dies.
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_500 });

      const started = await coordinator.migrate({ vm: 's1', to: 'host-b' });
      await watch.phase(started.id, 'performing');
      await waitFor(async () => (await mc.driver('host-a').find(vm.uuid))?.state === 'paused', { what: 's1 paused for the send', deadlineMs: 5_000, intervalMs: 5 });
      const killedAt = monoNow();
      await mc.agent('host-a').crash();
      expect(watch.latest(started.id)!.phase, 'the agent died mid-send').toBe('performing');
      await mc.agent('host-a').restart();
      const restartedAfterMs = monoNow() - killedAt;

      const record = await watch.settled(started.id, 30_000);
      // The VM process finished its send while its agent was down; the restarted agent re-takes the
      // source's local locks from its leases, and the perform sent again finds the VM paused with
      // its state sent, and sends it again: the destination takes it (it does not run yet).
      expect(record.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [record], 'host-b');
      figure('F-mig-2 source killed mid-send', { outcome: record.phase, restartedAfterMs: Math.round(restartedAfterMs), endedAfterKillMs: Math.round(watch.versions(started.id).at(-1)!.at - killedAt), timeline: record.timeline.map((e) => e.phase) });
    },
    60_000,
  );

  it(
    'the destination agent stopped before commit, SIGKILLed after it and restarted: the VM is unpaused only by the restarted agent, once',
    async () => {
      await using rig = await faultRig({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 5 });
      const { mc, coordinator, conn, watch } = rig;
      const vm = await writingVm(rig, 'host-a', 'd1', ['d1-root.img', 'd1-data.img']);
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 300 });
      const dest = mc.agent('host-b');

      // The destination agent is frozen from `performing` on (the send needs only its incoming VM
      // process, not the agent), so it is frozen for certain when the resume arrives after commit.
      const started = await coordinator.migrate({ vm: 'd1', to: 'host-b' });
      await freezeAt(watch, started.id, 'performing', dest.json.proc);
      const committed = await watch.phase(started.id, 'committed');
      // Committed to host-b, which cannot run it: the copy there is paused with the state, and no one
      // runs the VM (the source's copy is paused too, its local locks dropped).
      expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'paused', 'host-b': 'paused' });
      const killedAt = monoNow();
      await dest.crash();
      await dest.restart();
      const restartedAfterMs = monoNow() - killedAt;

      const record = await watch.settled(started.id, 30_000);
      // The restarted agent adopts its session, whose leases now include the VM's (committed to it),
      // re-takes their local locks for its live incoming copy, and the resume sent again runs it.
      expect(record.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [record], 'host-b');
      // The copy on host-b was unpaused once (by the resume), never by the agent restarting on its own.
      expect(runningEvents(mc, 'host-b', vm.uuid)).toBe(1);
      figure('F-mig-2 destination killed after commit', {
        outcome: record.phase,
        restartedAfterMs: Math.round(restartedAfterMs),
        downtimeMs: Math.round(watch.versions(started.id).find((s) => s.record.phase === 'confirming')!.at - committed.at),
        timeline: record.timeline.map((e) => e.phase),
      });
    },
    60_000,
  );
});

describe('the source VM process stalled while it is confirmed away', () => {
  it(
    'a source copy that does not answer for a while (SIGSTOP) is still destroyed: done means one copy',
    async () => {
      await using rig = await faultRig({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
      const { mc, coordinator, conn, watch } = rig;
      const vm = await writingVm(rig, 'host-a', 'z1', ['z1-root.img']);
      // The source copy's process (a QEMU busy or swapped out, here SIGSTOPped) stops answering
      // its control socket from the commit on, so the confirm finds it unresponsive, not gone.
      const sourcePid = vm.pid;
      let stopped = false;
      await using _cont = disposer(async () => void (stopped && process.kill(sourcePid, 'SIGCONT')));
      const started = await coordinator.migrate({ vm: 'z1', to: 'host-b' });
      await watch.on((r) => r.id === started.id && r.phase === 'committed', () => {
        process.kill(sourcePid, 'SIGSTOP');
        stopped = true;
      }, 'committed');
      // The stall ends once the confirm has been answered while it lasted: by a refusal the
      // coordinator will retry (the copy did not answer), or by the record closing.
      await waitFor(() => watch.latest(started.id)?.phase === 'done' || coordinator.said().some((l) => l.startsWith(`confirm of migration ${started.id} did not go through`)), {
        what: 'the confirm answered while the source copy is stalled',
        deadlineMs: 15_000,
      });
      process.kill(sourcePid, 'SIGCONT');
      stopped = false;
      const record = await ended(mc, watch, started.id, 20_000);
      expect(record.phase).toBe('done');
      // `done` says the source copy is gone (confirm destroys it): it must be, not left paused.
      await expectSettledVm(mc, conn, vm, [record], 'host-b');
    },
    60_000,
  );
});

describe('the destination agent down past its session TTL after commit', () => {
  it(
    'the leases vanish with its session; the migration rolls back to the source, which runs the only running copy; the VM can migrate there again',
    async () => {
      await using rig = await faultRig({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ttlSeconds: 3 });
      const { mc, coordinator, conn, watch } = rig;
      const vm = await writingVm(rig, 'host-a', 'x1', ['x1-root.img', 'x1-data.img']);
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 300 });
      const dest = mc.agent('host-b');

      // As above, the destination agent is frozen before the commit, but now it stays down until
      // its session has expired: the leases committed to it go with the session.
      const started = await coordinator.migrate({ vm: 'x1', to: 'host-b' });
      await freezeAt(watch, started.id, 'performing', dest.json.proc);
      await watch.phase(started.id, 'committed');
      await waitFor(async () => (await conn.range(conn.keys.host('host-b'))).kvs.length === 0, { what: 'host-b’s session to expire', deadlineMs: 15_000, intervalMs: 50 });
      // The committed leases went with the session. The coordinator may already have given them
      // back to the source: a resume nobody answers, to a destination without its leases, fails
      // (LEASE_LOST) without waiting for that agent.
      expect((await leaseState(conn, started)).map((s) => s.lease?.host ?? 'none'), 'the committed leases went with the session').not.toContain('host-b');
      await dest.crash();
      await dest.restart();

      const record = await ended(mc, watch, started.id, 30_000, coordinator.said);
      // The restarted agent has a new session and no lease: it cannot resume (LEASE_LOST), so the
      // leases go back to the source (nothing is held under them) and the source runs its copy.
      expect(record.phase).toBe('aborted');
      expect(record.timeline.find((e) => e.phase === 'returning')?.error).toBe('LEASE_LOST');
      // One running copy, on the source: the destination's copy, never unpaused, went when its
      // resume was refused (LEASE_LOST), since the abort after commit has no discard step.
      const left = await mc.copies(vm.uuid);
      expect(left['host-b'], 'the destination destroys its copy when its resume is refused').toBeUndefined();
      await expectSettledVm(mc, conn, vm, [record], 'host-a');
      figure('F-mig-2 destination down past its TTL', { outcome: record.phase, copies: left, timeline: record.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`).join(' ') });

      // And the VM can still go to host-b later: one copy at the end.
      const again = await coordinator.migrate({ vm: 'x1', to: 'host-b' });
      const record2 = await ended(mc, watch, again.id, 30_000, coordinator.said);
      expect(record2.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [record, record2], 'host-b');
    },
    60_000,
  );
});

