import { isStale, type ErrorCode } from '../../src/index.js';
import { other, withHost, type Msg, type Mutation, type Role, type World } from './world.js';

/**
 * The agents' side of the handoff, as the coordinator's commands require it. Each command is
 * handled in one step, atomically with the agent's read of the lease in etcd (the real agent
 * handles one command per VM at a time, and every etcd write that could invalidate a command in
 * flight is issued only after the host it would affect acknowledged a step that fences it). The
 * same argument lets a destination that prepared the copy itself, and has handled nothing for the
 * VM since, resume without reading the lease at all: it takes the command's token.
 *
 * Every handler is idempotent by its effect, not by remembering replies: a crash loses all
 * memory, so a command delivered twice must find the world already as it wants it.
 */

export interface Handled {
  world: World;
  error?: ErrorCode;
}

const refused = (world: World, error: ErrorCode): Handled => ({ world, error });

/** Whether the lock file is free for `role` (fcntl locks on shared storage: one holder). */
const lockFree = (w: World, role: Role) => w.hosts[other(role)].locks === null;

/**
 * Deliver a command. `fail` injects the environment's failure where one can happen: the
 * destination cannot open a lock file (prepare), the send breaks (perform), the lock file is
 * held by someone outside the model (resume).
 */
export function handle(before: World, m: Msg, fail: boolean, mutation: Mutation | undefined): Handled {
  // Whatever the command, it consumes the memory of an arrival; only a prepare sets it again.
  const vouched = m.step === 'resume' && before.hosts[m.role].arrived;
  const w = withHost(before, m.role, { arrived: false });
  if (vouched) return resume(w, m.role, fail, m.token);
  // S2: a command conditioned on an older revision than the lease's is refused before anything.
  if (isStale(m.token, w.lease.rev) && mutation !== 'agents-ignore-tokens') return refused(w, 'STALE_TOKEN');
  const me = w.hosts[m.role];
  switch (m.step) {
    case 'prepare':
      if (me.vm === 'running') return refused(w, 'RESOURCE_BUSY');
      if (me.vm === 'paused') return { world: withHost(w, m.role, { arrived: true }) };
      if (fail) return refused(w, 'IO_ERROR');
      // The incoming VM gets the definition in force, never a staged change (seed 002).
      return { world: withHost(w, m.role, { vm: 'paused', fresh: false, def: 0, arrived: true }) };
    case 'perform': {
      if (me.vm === 'absent') return refused(w, 'NOT_REGISTERED');
      let world = mutation === 'release-before-send' ? withHost(w, 'source', { locks: null }) : w;
      // The send needs the destination's incoming VM (the hypervisor's, not the agent's process).
      if (fail || w.hosts.destination.vm !== 'paused' || w.hosts.destination.lost) return refused(world, 'IO_ERROR');
      world = withHost(world, 'destination', { fresh: me.fresh, vm: mutation === 'unpause-before-commit' ? 'running' : 'paused' });
      // S4: the source lets go of its local locks only now that the state was sent.
      return { world: withHost(world, 'source', { vm: 'paused', locks: null }) };
    }
    case 'resume':
    case 'restore':
      if (w.lease.owner !== m.role) return refused(w, 'LEASE_LOST');
      return resume(w, m.role, fail && m.step === 'resume', w.lease.token);
    case 'confirm':
    case 'discard':
      // Never destroy a copy that runs: it is the VM.
      if (me.vm === 'running') return refused(w, 'RESOURCE_BUSY');
      return { world: withHost(w, m.role, { vm: 'absent', locks: null, fresh: false }) };
    default:
      throw new Error(`${m.step} is not an agent step`);
  }
}

/**
 * S5 and S3: take the local locks with the lease's `token`, then unpause, where this host holds the
 * lease (etcd said so, or the arrival vouches for it). A destination that cannot take its locks
 * destroys its incoming copy before answering, so no later duplicate of `resume` can ever unpause it.
 */
function resume(w: World, role: Role, fail: boolean, token: number): Handled {
  const me = w.hosts[role];
  if (me.vm === 'absent') return refused(w, 'NOT_REGISTERED');
  if (me.locks === token) return { world: settled(withHost(w, role, { vm: 'running' }), role) };
  if (fail || !lockFree(w, role)) {
    return refused(role === 'destination' ? withHost(w, role, { vm: 'absent', locks: null, fresh: false }) : w, 'RESOURCE_BUSY');
  }
  return { world: settled(withHost(w, role, { locks: token, vm: 'running' }), role) };
}

/** The destination runs the VM: the commit's markers go (Handoff.settle), with the unpause in one step. */
function settled(w: World, role: Role): World {
  return role === 'destination' && w.lease.mark === 'committed' ? { ...w, lease: { ...w.lease, mark: 'none' } } : w;
}

/** The agent process dies: its local locks go with it; its VM keeps running, unprotected. */
export function crash(w: World, role: Role): World {
  return withHost(w, role, { up: false, locks: null, arrived: false });
}

/**
 * The agent comes back and re-adopts its VM: a running VM keeps running only if this host holds
 * its lease and can take the local locks again with the current token; otherwise it is fenced
 * (paused). A paused VM stays paused: only the coordinator unpauses.
 */
export function restart(w: World, role: Role): World {
  const me = w.hosts[role];
  if (me.vm !== 'running') return withHost(w, role, { up: true });
  if (w.lease.owner === role && lockFree(w, role)) return withHost(w, role, { up: true, locks: w.lease.token });
  return withHost(w, role, { up: true, vm: 'paused', locks: null });
}
