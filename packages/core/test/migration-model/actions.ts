import { isSettled, stageDefinition, transition, VmDefinitionSchema, type MigrationStep, type MigrationStepReply } from '../../src/index.js';
import { crash, handle, restart } from './agents.js';
import { answerForLost, apply, commandOf, failover, issue, takeCancel, timeout, type Machine } from './coordinator.js';
import { ROLES, msgKey, withHost, withNet, type Budget, type Msg, type Mutation, type World } from './world.js';

export interface ModelOptions {
  budget: Budget;
  mutation?: Mutation;
  /** The machine under test; the real one unless a test mutates it. */
  machine?: Machine;
}

/** The change that arrives in flight; the model follows its version (World.defVersion), not its contents. */
const CHANGED_DEFINITION = VmDefinitionSchema.parse({ disks: [{ path: '/images/vm.img' }, { path: '/images/vm-data.img' }] });

/** One step of the world. Faults (and outside inputs) are excluded from the liveness argument. */
export interface Edge {
  label: string;
  fault: boolean;
  world: World;
  /** The command an agent handled in this step, for the stale-token check. */
  delivered?: Msg;
}

/** Steps where the environment can make an agent fail (S4's failed send, S5's lock that cannot be taken). */
const CAN_FAIL: readonly MigrationStep[] = ['prepare', 'perform', 'resume'];

const spend = (w: World, what: keyof Budget): World => ({ ...w, budget: { ...w.budget, [what]: w.budget[what] - 1 } });

const replyOf = (m: Msg): MigrationStepReply => (m.error === undefined ? { ok: true } : { ok: false, error: { code: m.error, message: m.error } });

/** Every step possible from `w`: deliveries in any order, the coordinator's moves, and each fault left in the budget. */
export function successors(w: World, options: ModelOptions): Edge[] {
  const machine = options.machine ?? { transition };
  const out: Edge[] = [];
  const add = (label: string, fault: boolean, world: World | undefined, delivered?: Msg) => {
    if (world !== undefined) out.push(delivered === undefined ? { label, fault, world } : { label, fault, world, delivered });
  };
  add('coordinator acts', false, issue(w, machine, options.mutation));
  add('coordinator times out and resends', false, timeout(w, options.mutation));
  add('coordinator answers for a lost host (its session ended)', false, answerForLost(w, machine, options.mutation));

  const seen = new Set<string>();
  w.net.forEach((m, i) => {
    const key = msgKey(m);
    if (seen.has(key)) return;
    seen.add(key);
    const without = withNet(w, [...w.net.slice(0, i), ...w.net.slice(i + 1)]);
    if (m.kind === 'reply') add(`coordinator receives ${key}`, false, apply(without, commandOf(w, m), replyOf(m), machine));
    else if (w.hosts[m.role].up) {
      for (const fail of CAN_FAIL.includes(m.step) && w.budget.failure > 0 ? [false, true] : [false]) {
        const handled = handle(without, m, fail, options.mutation);
        const reply: Msg = { kind: 'reply', role: m.role, step: m.step, token: m.token, ...(handled.error === undefined ? {} : { error: handled.error }) };
        const world = withNet(handled.world, [...handled.world.net, reply]);
        add(`${m.role} handles ${key}${fail ? ', and fails' : ''}`, fail, fail ? spend(world, 'failure') : world, m);
      }
    }
    if (w.budget.loss > 0) add(`lose ${key}`, true, spend(without, 'loss'));
    if (w.budget.dup > 0) add(`duplicate ${key}`, true, spend(withNet(w, [...w.net, m]), 'dup'));
  });

  for (const r of ROLES) {
    const budget = r === 'source' ? 'crashSource' : 'crashDestination';
    if (w.hosts[r].lost) continue;
    if (!w.hosts[r].up) add(`${r} agent restarts and re-adopts`, false, restart(w, r));
    else if (w.budget[budget] > 0) add(`${r} agent crashes`, true, spend(crash(w, r), budget));
  }
  // The destination lost before it runs the VM: its session ends, and the leases committed to it
  // vanish with it (the key absent, no write of the handoff's); the commit's marker, on no session,
  // stays. A destination that ran the VM is out of scope: the VM is lost with its host.
  const dest = w.hosts.destination;
  if (w.budget.loseDestination > 0 && !dest.lost && dest.vm !== 'running' && !w.pendingPut) {
    const lost = withHost(w, 'destination', { up: false, lost: true, locks: null, arrived: false });
    const vanished = w.lease.owner === 'destination' ? { ...lost, lease: { ...w.lease, owner: null } } : lost;
    // Commands to it go nowhere from now on.
    add('the destination host is lost for good', true, spend(withNet(vanished, w.net.filter((m) => m.kind !== 'cmd' || m.role !== 'destination')), 'loseDestination'));
  }
  // The source lost at any moment, and declared fenced: its copy goes with it (powered off), and
  // so does its session with every lease on it (the declaration revokes it). The markers, on no
  // session, stay.
  const src = w.hosts.source;
  if (w.budget.loseSource > 0 && !src.lost && !w.pendingPut) {
    const lost = withHost(w, 'source', { up: false, lost: true, vm: 'absent', locks: null, fresh: false, arrived: false });
    const vanished = w.lease.owner === 'source' ? { ...lost, lease: { ...w.lease, owner: null } } : lost;
    add('the source host is lost for good and declared fenced', true, spend(withNet(vanished, w.net.filter((m) => m.kind !== 'cmd' || m.role !== 'source')), 'loseSource'));
  }
  if (w.budget.failover > 0) add('coordinator fails over to a new leader', true, spend(failover(w), 'failover'));
  // The grant path wants nothing under the resource: a handoff marker keeps a third party out too.
  // Once a declared-fenced source's migration has let go of the disks, a third party (the
  // operator starting the VM again elsewhere) is let in only after the record has ended: in the
  // model its write would move the revision the remaining agent steps are conditioned on, where
  // the real agents compare the record's.
  if (w.lease.owner === null && w.lease.mark === 'none' && (!w.hosts.source.lost || isSettled(w.record))) {
    const rev = w.lease.rev + 1;
    add('a third party takes the free resource', false, { ...w, lease: { owner: 'third', token: rev, rev, mark: 'none' } });
  }
  if (w.budget.change > 0 && !isSettled(w.record)) {
    add('a definition change arrives', true, spend({ ...w, record: stageDefinition(w.record, CHANGED_DEFINITION, 0), defVersion: 1 }, 'change'));
  }
  if (w.budget.cancel > 0) {
    const cancelled = takeCancel(w, machine, options.mutation);
    if (cancelled !== undefined) add('an operator cancels the migration, and the coordinator takes it', true, spend(cancelled, 'cancel'));
  }
  return out;
}
