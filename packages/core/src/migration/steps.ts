import type { ErrorBody, ErrorCode } from '../errors.js';
import type { Token } from '../fencing.js';
import { migrationRule, type MigrationStep } from './phases.js';
import { currentRevision, type MigrationRecord } from './record.js';
import type { MigrationEvent, MigrationStepReply } from './machine.js';

/**
 * What the coordinator does next for a record, and what a reply means. Every command is keyed by
 * (migration, step, token), the token being the newest revision the migration wrote. The
 * coordinator ignores a reply whose key is not the one the record waits for; commands may be lost,
 * duplicated, reordered, or re-sent by a new leader. What makes that safe is the agents' side,
 * which test/migration-model/agents.ts models and the explorer checks against S1–S6:
 *
 * - Every command is refused (STALE_TOKEN) if its token is older than the lease's current
 *   revision in etcd, before anything else, and (INVALID_REQUEST) if it names a revision the
 *   migration has not written (see `OVERLAPS_SAVE`); and handled by its effect, not by remembered
 *   replies (a crash forgets them): a second delivery finds the world already as it wants it.
 * - prepare (destination): create the incoming VM paused with the definition in force, and check
 *   every lock file opens. perform (source): send; only once the send succeeded, pause and drop
 *   the local locks (S4). A paused source sends again.
 * - resume (destination) and restore (source): only where etcd says this host holds the lease,
 *   take the local locks with its current token, then unpause (S3, S5). A destination that cannot
 *   take them destroys its incoming copy before answering, so no late resume can unpause it.
 * - confirm and discard destroy a copy, never a running one.
 * - An agent restarting after a crash keeps a running VM only if it holds the lease and can take
 *   its local locks again, and pauses it otherwise; it never unpauses a paused VM by itself.
 */

/**
 * Steps the coordinator sends while the record that asks for them is still being saved, because
 * they lie on the handoff's critical path (source paused → destination running) and are safe
 * early: `resume` runs the VM only where the destination holds every lease with the commit's
 * token (etcd says so, or the destination's memory of the arrival vouches for it), so a duplicate
 * or a deposed leader's copy can do no harm; and a leader that dies before the save lands leaves
 * `sent`, whose commit a successor re-issues and recognises as its own. Every other agent step is
 * sent once its record is saved, so an agent sees in etcd exactly the token such a command
 * carries; a resume's token is at most the record's own revision (the commit wrote both).
 */
export const OVERLAPS_SAVE: readonly MigrationStep[] = ['resume'];

export interface IdempotencyKey {
  migration: string;
  step: MigrationStep;
  token: Token;
}

/**
 * `etcd`: one transaction of the coordinator's own, compare-on-revision. When it is re-issued
 * after a crash it must recognise its own earlier success (the values it wrote name the migration
 * and step) and report the revision it wrote then.
 */
export type MigrationCommand =
  | { target: 'etcd'; step: MigrationStep; key: IdempotencyKey }
  | { target: 'source' | 'destination'; host: string; step: MigrationStep; key: IdempotencyKey };

/** The one command the record waits for; undefined once it is closed. */
export function nextStep(record: MigrationRecord): MigrationCommand | undefined {
  const rule = migrationRule(record.phase);
  if (rule === undefined) return undefined;
  const key = { migration: record.id, step: rule.step, token: currentRevision(record) };
  return rule.target === 'etcd' ? { target: 'etcd', step: rule.step, key } : { target: rule.target, host: record[rule.target], step: rule.step, key };
}

export function sameIdempotencyKey(a: IdempotencyKey, b: IdempotencyKey): boolean {
  return a.migration === b.migration && a.step === b.step && a.token === b.token;
}

/** Codes that say the peer may not have acted at all: the same command is sent again. */
export const RETRYABLE_STEP_CODES: readonly ErrorCode[] = ['UNAVAILABLE', 'SHUTTING_DOWN'];

export type ReplyDecision =
  /** The reply answers a command the record no longer waits for (an old step, an old leader's): ignore it. */
  | { kind: 'stale' }
  /** Send the same command again: the peer may not have acted, or the step has no way out but success. */
  | { kind: 'retry'; error: ErrorBody }
  /** Feed the event to `transition`. */
  | { kind: 'event'; event: MigrationEvent };

export function decideReply(record: MigrationRecord, command: MigrationCommand, reply: MigrationStepReply): ReplyDecision {
  const awaited = nextStep(record);
  if (awaited === undefined || !sameIdempotencyKey(awaited.key, command.key)) return { kind: 'stale' };
  if (!reply.ok && (RETRYABLE_STEP_CODES.includes(reply.error.code) || migrationRule(record.phase)?.failed === undefined)) {
    return { kind: 'retry', error: reply.error };
  }
  return { kind: 'event', event: { ...reply, step: command.step } };
}
