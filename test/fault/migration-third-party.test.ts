import { describe, expect, it } from 'vitest';
import type { HostedVm, MigrationRecord } from '@baton/core';
import { migrationServers, monoNow, within } from '../support/index.js';
import { Contender } from './fault-kit.js';
import {
  EtcdContender,
  disposer,
  ended,
  expectSettledVm,
  figure,
  faultRig,
} from './migration-kit.js';

/** A third party asking for the disks throughout 200 live migrations (kit and the checks every history gets: migration-kit.ts). */
const servers = migrationServers();

// ---------------------------------------------------------------------------------------------
// 5. A third party asking for the VMs' disks throughout 200 migrations.
// ---------------------------------------------------------------------------------------------

const MIGRATIONS = 200;
const VMS = 4;

describe('a third party asking for the disks throughout many migrations', () => {
  it(
    `never wins during ${MIGRATIONS} migrations of ${VMS} VMs back and forth, and every migration completes`,
    async () => {
      // host-c is the contender's host: an agent of the same cluster, on the same lock directory.
      await using rig = await faultRig({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], hosts: ['host-a', 'host-b', 'host-c'] });
      const { mc, coordinator, conn, watch } = rig;
      const vms: { vm: HostedVm; home: string }[] = [];
      for (let i = 0; i < VMS; i++) {
        const home = i % 2 === 0 ? 'host-a' : 'host-b';
        vms.push({ vm: await coordinator.startVm(mc, home, `t${i}`, [`t${i}-root.img`, `t${i}-data.img`]), home });
      }
      const disks = vms.flatMap(({ vm }) => vm.locks.map((l) => l.resource));

      // Two third parties: an owner on host-c asking its agent (etcd grant, then the local lock),
      // and host-d asking etcd directly. Each asks for one disk after another, without pause.
      const viaAgent = await Contender.on(mc.agent('host-c'), 'thief');
      const stop = new AbortController();
      const agentLoop = (async () => {
        for (let i = 0; !stop.signal.aborted; i++) {
          const a = await viaAgent.try(disks[i % disks.length]!);
          if (a.token !== undefined) await viaAgent.release();
        }
      })();
      await using contenderConn = mc.connectEtcd();
      const viaEtcd = await EtcdContender.start(contenderConn, () => disks);
      await using contenders = disposer(async () => {
        stop.abort();
        await within(agentLoop, 10_000, 'the host-c contender');
        await within(viaEtcd.stop(), 10_000, 'the etcd contender');
      });

      const t0 = monoNow();
      let started = 0;
      const byVm = new Map<string, MigrationRecord[]>(vms.map(({ vm }) => [vm.uuid, []]));
      // Each VM goes back and forth, one migration after another; the VMs migrate concurrently.
      // The first failure stops every loop before the next migration, and all are awaited, so no
      // migration is still being started while the cluster is torn down.
      const halt = new AbortController();
      const loops = vms.map(async ({ vm, home }) => {
        let host = home;
        while (started < MIGRATIONS && !halt.signal.aborted) {
          started++;
          const to = host === 'host-a' ? 'host-b' : 'host-a';
          try {
            const record = await ended(mc, watch, (await coordinator.migrate({ vm: vm.uuid, to })).id, 30_000, coordinator.said);
            expect(record.phase, `${vm.name} ${host} → ${to}`).toBe('done');
            byVm.get(vm.uuid)!.push(record);
          } catch (err) {
            halt.abort(err);
            throw err;
          }
          host = to;
        }
      });
      const outcomes = await Promise.allSettled(loops);
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed) throw failed.reason;
      const elapsedMs = monoNow() - t0;
      // Both third parties stop before their attempts are counted.
      await contenders[Symbol.asyncDispose]();

      const all = [...byVm.values()].flat();
      expect(all).toHaveLength(MIGRATIONS);
      const during = (at: number): boolean => all.some((r) => r.timeline[0]!.atMs <= at && at <= r.timeline.at(-1)!.atMs);
      const handoffs = all.map((r) => [r.timeline.find((e) => e.phase === 'performing')!.atMs, r.timeline.find((e) => e.phase === 'confirming')!.atMs] as const);
      const inHandoff = (at: number): boolean => handoffs.some(([from, to]) => from <= at && at <= to);
      const agentInHandoffs = viaAgent.attempts.filter((a) => inHandoff(a.sentAt)).length;
      const etcdInHandoffs = viaEtcd.sentAt.filter(inHandoff).length;
      const agentAnswers = new Map<string, number>();
      for (const a of viaAgent.attempts) agentAnswers.set(a.error?.code ?? 'granted', (agentAnswers.get(a.error?.code ?? 'granted') ?? 0) + 1);
      figure('F-mig-5 third party during migrations', {
        migrations: all.length,
        vms: VMS,
        elapsedMs: Math.round(elapsedMs),
        perMigrationMs: Math.round(elapsedMs / all.length),
        viaAgent: { attempts: viaAgent.attempts.length, duringMigrations: viaAgent.attempts.filter((a) => during(a.sentAt)).length, sentFromSendToResume: agentInHandoffs, answers: Object.fromEntries(agentAnswers) },
        viaEtcd: { attempts: viaEtcd.attempts, sentFromSendToResume: etcdInHandoffs, answers: Object.fromEntries(viaEtcd.answers) },
      });
      expect(viaAgent.attempts.filter((a) => a.token !== undefined), 'grants to host-c').toEqual([]);
      expect(viaEtcd.wins, 'grants to host-d').toEqual([]);
      expect(viaAgent.attempts.length).toBeGreaterThan(MIGRATIONS);
      expect(viaEtcd.attempts).toBeGreaterThan(MIGRATIONS);
      // Both asked while the leases were changing hands (send to resume), not only around it.
      expect(agentInHandoffs, 'attempts through an agent between send and resume').toBeGreaterThan(MIGRATIONS / 4);
      expect(etcdInHandoffs, 'attempts straight to etcd between send and resume').toBeGreaterThan(MIGRATIONS / 4);
      for (const { vm, home } of vms) {
        const records = byVm.get(vm.uuid)!;
        const host = records.length % 2 === 0 ? home : home === 'host-a' ? 'host-b' : 'host-a';
        const epochs = await expectSettledVm(mc, conn, vm, records, host);
        for (const disk of epochs) expect(disk).toHaveLength(records.length + 1);
      }
    },
    300_000,
  );
});
