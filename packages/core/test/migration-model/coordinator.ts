import {
  cancelMigration,
  decideReply,
  isCancellable,
  nextStep,
  takeStagedDefinition,
  transition,
  type ErrorCode,
  type MigrationCommand,
  type MigrationStepReply,
} from '../../src/index.js';
import { withHost, withNet, type Msg, type Mutation, type Role, type World } from './world.js';

/**
 * The coordinator as the real one will be: it persists the record, asks `nextStep` what to do,
 * and feeds every answer through `decideReply` and `transition`. Its etcd steps are atomic with
 * persisting the record (one transaction, or a step that recognises its own earlier success), so
 * a crash loses only what it was waiting for.
 */

export type Machine = { transition: typeof transition };

const failed = (w: World, code: ErrorCode) => ({ world: w, reply: { ok: false, error: { code, message: code } } as MigrationStepReply });

/** One etcd transaction, compare-on-revision. Undefined reply: the step is not over yet. */
function etcdStep(w: World, cmd: MigrationCommand, mutation: Mutation | undefined): { world: World; reply?: MigrationStepReply } {
  const { lease } = w;
  const rev = lease.rev + 1;
  if (cmd.step === 'begin') {
    if (lease.owner !== 'source' || lease.mark !== 'none') return failed(w, 'MIGRATION_CONFLICT');
    return { world: { ...w, lease: { ...lease, rev, mark: 'reserved' } }, reply: { ok: true, revision: rev, grants: [lease.token] } };
  }
  if (lease.rev !== cmd.key.token) return failed(w, 'STALE_TOKEN');
  const put = (owner: Role | null, token: number, mark: World['lease']['mark'] = 'none') => ({
    world: { ...w, lease: { owner, token, rev, mark } },
    reply: { ok: true, revision: rev } as MigrationStepReply,
  });
  switch (cmd.step) {
    case 'mark':
      // Only the markers are written: a lease that vanished with the source's session stays absent.
      return put(lease.owner as Role | null, lease.token, 'handoff');
    case 'commit':
      // The transaction compares the destination's session: one that ended fails it for good.
      if (w.hosts.destination.lost) return failed(w, 'LEASE_LOST');
      // The mutation: a delete and a put, leaving the key absent in between (breaks S6).
      if (mutation === 'commit-in-two-txns') return { world: { ...w, lease: { ...lease, owner: null, rev }, pendingPut: true } };
      // The mutation: the protocol before the commit kept its markers (they went with the commit).
      return put('destination', rev, mutation === 'commit-drops-marker' ? 'none' : 'committed');
    case 'unmark':
      // Only the markers go: the lease is the source's, with its own grant token, as it never
      // stopped holding (S4); or absent, gone with the source's session.
      return put(lease.owner as Role | null, w.record.tokens.grants![0]!);
    case 'give-back':
      // A source declared fenced has nothing to take back: the leases are released instead (the
      // destination's copy, which could not run, is gone). The mutation gives them to it anyway.
      if (w.hosts.source.lost && mutation !== 'give-back-to-lost-source') return put(null, lease.token);
      if (w.hosts.source.lost) return failed(w, 'LEASE_LOST');
      return put('source', rev);
    default:
      throw new Error(`${cmd.step} is not an etcd step`);
  }
}

/** What the coordinator does with the answer to `cmd`. */
export function apply(w: World, cmd: MigrationCommand, reply: MigrationStepReply, machine: Machine): World {
  const decision = decideReply(w.record, cmd, reply);
  if (decision.kind === 'stale') return w;
  if (decision.kind === 'retry') return cmd.target === 'etcd' ? w : send(w, cmd);
  return { ...w, record: machine.transition(w.record, decision.event, 0), awaiting: false };
}

function send(w: World, cmd: MigrationCommand): World {
  const role = cmd.target as Role;
  // A lost host's subscriptions went with it: the command is sent, and nobody gets it.
  if (w.hosts[role].lost) return { ...w, awaiting: true };
  const msg: Msg = { kind: 'cmd', role, step: cmd.step, token: cmd.key.token };
  return { ...withNet(w, [...w.net, msg]), awaiting: true };
}

/**
 * The real coordinator's EtcdSteps.unanswered: a step nobody answers, once etcd shows its host's
 * session has ended, takes etcd's answer. The destination's: prepare fails (LEASE_LOST), discard
 * is done (the copy never held a lease), resume fails (LEASE_LOST) when the lease is not the
 * destination's. The source's, once an operator has declared that host fenced: perform fails
 * (LEASE_LOST), restore and confirm are done (its copy went with the host). In the model the
 * session ends exactly when the host is lost, and a lost source is a declared one.
 */
export function answerForLost(w: World, machine: Machine, mutation: Mutation | undefined): World | undefined {
  const cmd = nextStep(w.record);
  if (mutation === 'wait-for-lost-host' || !w.awaiting || cmd === undefined || cmd.target === 'etcd' || !w.hosts[cmd.target].lost) return undefined;
  switch (cmd.step) {
    case 'discard':
    case 'restore':
    case 'confirm':
      return apply(w, cmd, { ok: true }, machine);
    case 'prepare':
    case 'perform':
      return apply(w, cmd, failed(w, 'LEASE_LOST').reply, machine);
    case 'resume':
      return w.lease.owner === 'destination' ? undefined : apply(w, cmd, failed(w, 'LEASE_LOST').reply, machine);
    default:
      return undefined;
  }
}

/** The coordinator's next move while it waits for nothing: one etcd step, or one command sent. */
export function issue(w: World, machine: Machine, mutation: Mutation | undefined): World | undefined {
  if (w.awaiting) return undefined;
  if (w.pendingPut) return finishSplitCommit(w, machine);
  const cmd = nextStep(w.record);
  if (cmd === undefined) {
    // Closed: the staged definition goes to the surviving copy, and only now (seed 002).
    const taken = takeStagedDefinition(w.record);
    if (taken === undefined) return undefined;
    const survivor: Role = taken.host === w.record.source ? 'source' : 'destination';
    // A host declared fenced has no VM to apply it to: the change is dropped (as for a destroyed VM).
    if (w.hosts[survivor].lost) return { ...w, record: taken.record };
    return withHost({ ...w, record: taken.record }, survivor, { def: w.defVersion });
  }
  if (cmd.target !== 'etcd') return send(w, cmd);
  const { world, reply } = etcdStep(w, cmd, mutation);
  return reply === undefined ? world : apply(world, cmd, reply, machine);
}

function finishSplitCommit(w: World, machine: Machine): World {
  const cmd = nextStep(w.record)!;
  const rev = w.lease.rev + 1;
  const world = { ...w, pendingPut: false };
  if (w.lease.owner !== null) return apply(world, cmd, failed(w, 'RESOURCE_BUSY').reply, machine);
  return apply({ ...world, lease: { owner: 'destination', token: rev, rev, mark: 'none' } }, cmd, { ok: true, revision: rev }, machine);
}

/** The command a reply answers, as the coordinator matches it: by its idempotency key. */
export function commandOf(w: World, m: Msg): MigrationCommand {
  return { target: m.role, host: w.record[m.role], step: m.step, key: { migration: w.record.id, step: m.step, token: m.token } };
}

/** The waited-for command was lost (or its reply was): the coordinator's timeout sends it again. */
export function timeout(w: World, mutation: Mutation | undefined): World | undefined {
  const cmd = nextStep(w.record);
  if (!w.awaiting || cmd === undefined || cmd.target === 'etcd' || mutation === 'no-resend-on-timeout') return undefined;
  const inFlight = w.net.some((m) => m.role === cmd.target && m.step === cmd.step && m.token === cmd.key.token);
  return inFlight ? undefined : send(w, cmd);
}

/**
 * The leader dies and a new one takes over, reading the persisted record. Replies in flight were
 * addressed to the old leader's inbox and are lost with it; commands in flight still arrive.
 */
export function failover(w: World): World {
  return { ...withNet(w, w.net.filter((m) => m.kind === 'cmd')), awaiting: false, pendingPut: false };
}

/**
 * An operator's cancel, taken by the coordinator: before the commit the awaited step is taken as
 * failed and the record rolls back; past it (or already rolling back) nothing changes. Taken the
 * moment it arrives, which covers every moment the real Drive can take it (at the top of its loop:
 * a cancel asked earlier and taken later is one asked later). The model takes it whether or not
 * the step is still in flight (the real one waits for the reply or its deadline): a late command,
 * or its reply, must then change nothing. The mutation honours it after the commit too, abandoning
 * the resume in flight. Undefined when nothing would change.
 */
export function takeCancel(w: World, machine: Machine, mutation: Mutation | undefined): World | undefined {
  if (w.pendingPut) return undefined;
  const { phase } = w.record;
  if (mutation === 'cancel-after-commit' && phase === 'committed') {
    const cancelled = { ok: false, error: { code: 'MIGRATION_CANCELLED', message: 'cancelled' } } as const;
    return { ...w, record: machine.transition(w.record, { step: 'resume', ...cancelled }, 0), awaiting: false };
  }
  if (!isCancellable(phase)) return undefined;
  return { ...w, record: cancelMigration(w.record, 0), awaiting: false };
}
