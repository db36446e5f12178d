import { isClosedPhase, isSettled, isStale, migrationRule, type MigrationRecord } from '../../src/index.js';
import { ROLES, SOURCE_GRANT, hostKey, type Msg, type World } from './world.js';

/**
 * DESIGN §2's invariants as the explorer checks them: in every reachable state, on every
 * transition, and in every terminal state. Each returns the name of what was violated and why,
 * or undefined.
 */

const running = (w: World) => ROLES.filter((r) => w.hosts[r].vm === 'running');

export function checkState(w: World): string | undefined {
  const { lease, record } = w;
  const run = running(w);
  if (run.length > 1) return 'S1: the VM runs on both hosts';
  if (ROLES.every((r) => w.hosts[r].locks !== null)) return 'S1: both hosts hold the local locks';
  for (const r of run) {
    const h = w.hosts[r];
    if (lease.owner !== r) return `S3: the VM runs on the ${r}, whose host does not hold the lease (${lease.owner ?? 'absent'})`;
    // While its agent is down a VM runs without local locks: that gap is the watchdog's, not the handoff's.
    if (h.up && h.locks !== lease.token) return `S3: the VM runs on the ${r} without its local locks at token ${lease.token} (${h.locks ?? 'none'})`;
    // Not in DESIGN §2 but what migration is for: a copy that runs holds the latest state.
    if (!h.fresh) return `continuity: the ${r} runs a stale copy of the VM`;
  }
  // A third party may have the disks only once no host of the migration can run the VM again: its
  // source was declared fenced and the migration has let go of them (unmarked, or released at give-back).
  if (lease.owner === 'third' && (run.length > 0 || !w.hosts.source.lost)) return 'S6: a third party won the resource';
  // The key may be absent in an open migration only when a lost host's session took it: the
  // destination's before it ran the VM (the commit's marker stands), or the source's (declared
  // fenced: its markers stand, or the abort let go of them once nothing could run the VM).
  const absentAllowed = lease.mark === 'committed' || (w.hosts.source.lost && (lease.mark !== 'none' || record.phase === 'discarding' || record.phase === 'restoring'));
  if (record.tokens.begin !== undefined && !isClosedPhase(record.phase) && lease.owner === null && !absentAllowed) return `S6: the lease key is absent in ${record.phase}`;
  if (!isClosedPhase(record.phase) && ROLES.some((r) => w.hosts[r].def !== 0)) return 'seed 002: a definition change reached a VM in flight';
  return undefined;
}

/** Properties of one step: what may change, and how. */
export function checkEdge(before: World, after: World, delivered: Msg | undefined): string | undefined {
  if (isStale(after.lease.token, before.lease.token)) return `S2: the lease token went back from ${before.lease.token} to ${after.lease.token}`;
  if (isStale(after.lease.rev, before.lease.rev)) return 'S2: the lease revision went back';
  if (delivered?.kind === 'cmd' && isStale(delivered.token, before.lease.rev) && hostsKey(before) !== hostsKey(after)) {
    return `S2: the ${delivered.role} acted on ${delivered.step} with stale token ${delivered.token} (current ${before.lease.rev})`;
  }
  const [src0, src1] = [before.hosts.source, after.hosts.source];
  if (src0.locks !== null && src1.locks === null && src1.up && src1.vm !== 'absent' && !after.hosts.destination.fresh) {
    return 'S4: the source let go of its local locks before its state was sent';
  }
  const dst = (w: World) => w.hosts.destination;
  if (dst(after).vm === 'running' && dst(before).vm !== 'running') {
    if (dst(before).vm !== 'paused') return 'S5: the destination VM ran without first being created paused';
    if (after.record.tokens.commit === undefined || after.lease.token !== after.record.tokens.commit) return 'S5: the destination unpaused without the commit token';
  }
  return undefined;
}

/** What a host did, without what its agent remembers (a stale command may consume an arrival). */
const hostsKey = (w: World) => ROLES.map((r) => hostKey({ ...w.hosts[r], arrived: false })).join();

/** Nothing left to do or to arrive: the record is settled, the network empty, both agents up (or their host lost for good). */
export function isTerminal(w: World): boolean {
  return isSettled(w.record) && w.net.length === 0 && ROLES.every((r) => w.hosts[r].up || w.hosts[r].lost);
}

/** A terminal state: the VM running on exactly one host, with its lease and locks, the record closed with its timeline. */
export function checkTerminal(w: World): string | undefined {
  if (w.record.phase === 'aborted' && w.hosts.source.lost) return vmLostWithSource(w);
  const survivor = w.record.phase === 'done' ? 'destination' : 'source';
  const h = w.hosts[survivor];
  if (h.vm !== 'running') return `end: the VM is ${h.vm} on the ${survivor} after ${w.record.phase}`;
  // A lost host's copy is no copy: nothing can run it (its agent is back only in the real system, which then removes it).
  if (ROLES.some((r) => r !== survivor && !w.hosts[r].lost && w.hosts[r].vm !== 'absent')) return `end: a second copy of the VM is left after ${w.record.phase}`;
  if (w.lease.owner !== survivor || w.lease.mark !== 'none' || h.locks !== w.lease.token) return `end: the ${survivor} does not hold the lease and its locks plainly`;
  // done: the commit token; aborted after commit: the give-back's; before it: the source's own
  // grant (as begin read it, or untouched when the migration was cancelled before it began).
  const t = w.record.tokens;
  const expected = w.record.phase === 'done' ? t.commit : t.commit !== undefined ? t.revert : t.begin === undefined ? SOURCE_GRANT : t.grants?.[0];
  if (expected !== w.lease.token) return `end: the lease token ${w.lease.token} is not the record's (${expected ?? 'none'})`;
  if (h.def !== w.defVersion) return 'seed 002: the staged definition was not applied at the end';
  return timelineIsAPath(w.record) ? undefined : 'end: the timeline is not a path through the transition table';
}

/**
 * Aborted with its source declared fenced: the VM went with that host. No copy is left anywhere,
 * and the disks are free for the operator to start the VM again (a third party may have them).
 */
function vmLostWithSource(w: World): string | undefined {
  const dst = w.hosts.destination;
  if (!dst.lost && dst.vm !== 'absent') return `end: the destination keeps a ${dst.vm} copy after its source was declared fenced`;
  if (w.lease.owner === 'source' || w.lease.owner === 'destination' || w.lease.mark !== 'none') return 'end: the disks stay taken after the source was declared fenced';
  return timelineIsAPath(w.record) ? undefined : 'end: the timeline is not a path through the transition table';
}

function timelineIsAPath(record: MigrationRecord): boolean {
  const phases = record.timeline.map((e) => e.phase);
  return (
    phases[0] === 'begun' &&
    phases.slice(1).every((p, i) => {
      const rule = migrationRule(phases[i]!);
      return p === rule?.ok || p === rule?.failed;
    })
  );
}
