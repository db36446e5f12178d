// The migration section's rows in the bench's one table, and its targets.
import { latencyRow, times, type Row } from './table.js';
import { PATH_PHASES, PHASE_LABELS } from './migration-path.js';
import { type MigrationResults, QEMU_DOWNTIME_MS } from './migration-rig.js';

export const MIGRATION_TARGET = {
  /** Critical path p50 against the floor's p50. */
  vsFloor: 1.5,
  /** Critical path p99, in ms. */
  p99Ms: 20,
  /** At most this many etcd transactions and bus messages inside any migration's critical path. */
  etcdWrites: 1,
  busMessages: 2,
};

const ms = (us: number): string => (us / 1000).toFixed(us < 10_000 ? 2 : 1);
const ofQemu = (us: number): string => `${((us / 1000 / QEMU_DOWNTIME_MS) * 100).toFixed(1)}%`;

/** The section's rows, in the bench's one table. */
export function migrationRows(m: MigrationResults): Row[] {
  const rows: Row[] = [];
  const tag = '[migration]';
  const f = m.floor;
  if (f) {
    rows.push(latencyRow(`${tag} floor: 1 etcd compare-and-put + 2 NATS request/reply`, f.total, { value: `${ms(f.total.p50)} ms`, ratio: 'floor' }));
    rows.push(latencyRow(`${tag}   etcd txn: compare-and-put, record-sized value (${m.etcdMembers} members, any member)`, f.txn, { ratio: `${times(f.txn.p50, f.total.p50)} floor` }));
    rows.push(latencyRow(`${tag}   NATS request/reply, trivial responder in another process (Bus)`, f.nats, { ratio: `${times(f.nats.p50, f.total.p50)} floor` }));
    rows.push(latencyRow(`${tag}   etcd range, linearizable (not in the floor: each read on the path)`, f.range, { ratio: `${times(f.range.p50, f.total.p50)} floor` }));
  }
  const h = m.handoff;
  if (h) {
    const cp = h.criticalPath;
    const vsFloor = f ? cp.p50 / f.total.p50 : Number.NaN;
    const p99Limit = MIGRATION_TARGET.p99Ms * 1000;
    const pass = vsFloor <= MIGRATION_TARGET.vsFloor && cp.p99 <= p99Limit && h.diskViolation === undefined;
    rows.push(
      latencyRow(`${tag} handoff critical path: source VM paused → destination VM running (1 disk; events in whole ms)`, cp, {
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
      rows.push(latencyRow(`${tag}   ${i + 1}. ${PHASE_LABELS[p]}`, s, { ratio: `mean ${ms(s.mean)} ms, ${((s.mean / total) * 100).toFixed(0)}% of the path` }));
    });
    const pm = h.perMigration;
    const within = { etcd: h.most.etcdWrites <= MIGRATION_TARGET.etcdWrites, bus: h.most.busMessages <= MIGRATION_TARGET.busMessages };
    rows.push({
      name: `${tag} inside the critical path (record timeline)`,
      n: h.measured,
      value: `${h.path.etcdWrites} etcd writes, ${h.path.busMessages} NATS messages (most in any migration: ${h.most.etcdWrites}, ${h.most.busMessages})`,
      target: `≤ ${MIGRATION_TARGET.etcdWrites} etcd txn, ≤ ${MIGRATION_TARGET.busMessages} bus hops, every migration`,
      result: within.etcd && within.bus && h.measured > 0 ? 'PASS' : 'MISS',
      checks: [
        { what: 'etcd writes inside the critical path (most in any migration)', value: h.most.etcdWrites, limit: MIGRATION_TARGET.etcdWrites, pass: within.etcd },
        { what: 'NATS messages inside the critical path (most in any migration)', value: h.most.busMessages, limit: MIGRATION_TARGET.busMessages, pass: within.bus },
      ],
      ratio: `${h.path.steps.join(' → ')}${h.pathVariants.length === 1 ? ' (every migration)' : ` (${h.pathVariants.map((v) => v.n).join(' + ')} migrations had ${h.pathVariants.length} different paths: see results.json)`}; a whole migration: ${pm.txn.toFixed(1)} Txn, ${pm.range.toFixed(1)} Range, ${pm.proposals.toFixed(1)} raft proposals`,
    });
    rows.push(latencyRow(`${tag} whole migration, begun → done (sequential; prepare starts the incoming VM process)`, h.whole));
  }
  const l = m.lock;
  if (l) {
    rows.push(
      latencyRow(`${tag} etcd3 Lock handoff: source release → destination acquire done (peer)`, l.handoff, {
        value: `p50 ${ms(l.handoff.p50)} ms`,
        ratio: `peer; ${f ? `${times(l.handoff.p50, f.total.p50)} floor` : ''}${h ? `, ${times(l.handoff.p50, h.criticalPath.p50)} Baton's path` : ''}`,
      }),
    );
    rows.push(latencyRow(`${tag} etcd3 Lock handoff: lock free (release done → acquire done)`, l.free, { value: `free ${ms(l.free.p50)} ms (p50)`, ratio: "Baton's lease is never free: commit moves it in one txn" }));
  }
  for (const s of m.storms) {
    const pass = s.done === s.migrations && s.violations.length === 0;
    const limits = `${s.limits.perHost} per host, ${s.limits.inCluster} in the cluster`;
    const which = s.limitsKind === 'raised' ? `${s.vms} in flight (limits raised to ${limits})` : `${s.vms} asked at once, the default limits (${limits}) hold the rest`;
    const stag = `${tag} storm${s.limitsKind === 'raised' ? '' : ', default limits'}:`;
    rows.push({
      name: `${tag} storm: ${s.vms} VMs × ${s.perVm} migrations among ${s.hosts} hosts, ${which}`,
      n: s.done,
      value: `${s.perSecond.toFixed(1)} migrations/s`,
      ratio: `${s.done}/${s.migrations} done, the last after ${s.busySeconds.toFixed(1)} s (all chains ended after ${s.seconds.toFixed(1)} s); ${s.disksChecked} disks checked; violations: ${s.broken.disks} disks (S1/S2), ${s.broken.failed} migrations failed or stuck, ${s.broken.copies} VMs not running once where sent, ${s.broken.orphans} orphaned VM processes; max ${s.maxInFlight} asked at once; ${s.retries} steps re-sent; machine ${s.machineCpu.toFixed(2)} CPUs busy`,
      target: 'every migration done, 0 violations',
      result: pass ? 'PASS' : 'MISS',
      checks: [
        { what: 'storm migrations not done', value: s.migrations - s.done, limit: 0, pass: s.done === s.migrations },
        { what: 'storm violations (S1/S2 on disks, copies, failed migrations)', value: s.violations.length, limit: 0, pass: s.violations.length === 0 },
      ],
    });
    rows.push(latencyRow(`${stag} whole migration, begun → done${s.limitsKind === 'raised' ? '' : ' (its wait for a slot included)'}`, s.whole));
    rows.push(latencyRow(`${stag} critical path under load (paused → running)`, s.criticalPath, { value: `p99 ${ms(s.criticalPath.p99)} ms = ${ofQemu(s.criticalPath.p99)} of ${QEMU_DOWNTIME_MS} ms` }));
  }
  return rows;
}
