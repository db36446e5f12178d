import { BatonError, type ErrorBody } from '../errors.js';
import { isStale, maxToken, type Token } from '../fencing.js';
import { MIGRATION_STEP_WRITES, isCancellable, isClosedPhase, migrationRule, type MigrationPhase, type MigrationStep } from './phases.js';
import type { LeaseLoss } from '../wire/cluster.js';
import type { VmDefinition } from '../wire/vm-definition.js';
import { currentRevision, isSettled, type MigrationRecord, type MigrationTokens } from './record.js';

/**
 * The pure migration state machine: a record and an event in, the next record out. No I/O, no
 * clock: the caller supplies `atMs` from its monotonic clock and persists what comes back.
 */

/**
 * What a step's executor answers. An etcd step that wrote reports the revision it wrote (and
 * begin, the source's grant token of each resource); an agent step reports success, prepare
 * where the source is to send the VM's state, and perform the lease-loss policy the VM ran under.
 */
export type MigrationStepReply = { ok: true; revision?: Token; grants?: Token[]; incoming?: string; onLeaseLoss?: LeaseLoss } | { ok: false; error: ErrorBody };

/** A step's outcome, as the machine consumes it. */
export type MigrationEvent = MigrationStepReply & { step: MigrationStep };

function refuse(record: MigrationRecord, event: MigrationEvent, why: string): BatonError {
  return new BatonError('INVALID_REQUEST', `migration ${record.id}: ${why}`, {
    details: { migration: record.id, phase: record.phase, step: event.step, ok: event.ok },
  });
}

/** The tokens after a successful step: what an etcd step wrote must be newer than every token before it (S2). */
function written(record: MigrationRecord, event: MigrationEvent & { ok: true }): MigrationTokens {
  const { revision, grants } = event;
  const slot = MIGRATION_STEP_WRITES[event.step];
  if (slot === undefined) {
    if (revision !== undefined || grants !== undefined) throw refuse(record, event, `${event.step} writes no revision`);
    return record.tokens;
  }
  if (revision === undefined) throw refuse(record, event, `${event.step} must report the revision it wrote`);
  if ((grants !== undefined) !== (event.step === 'begin')) throw refuse(record, event, 'begin, and only begin, reports the grants');
  if (grants !== undefined && grants.length !== record.resources.length) throw refuse(record, event, 'begin must report one grant token per resource');
  const newest = (grants ?? []).reduce(maxToken, currentRevision(record));
  if (!isStale(newest, revision)) {
    throw new BatonError('STALE_TOKEN', `migration ${record.id}: ${event.step} reported revision ${revision}, not newer than ${newest}`, {
      details: { migration: record.id, step: event.step, presented: revision, current: newest },
    });
  }
  return grants === undefined ? { ...record.tokens, [slot]: revision } : { ...record.tokens, grants: [...grants], [slot]: revision };
}

function enter(record: MigrationRecord, phase: MigrationPhase, atMs: number, tokens: MigrationTokens, error?: ErrorBody): MigrationRecord {
  const entry = error === undefined ? { phase, atMs } : { phase, atMs, error: error.code };
  return { ...record, phase, tokens, timeline: [...record.timeline, entry] };
}

/**
 * Apply a step's outcome. Refused (INVALID_REQUEST, nothing changed) when the record does not
 * wait for that step, or the step failed where the table has no failure path; refused with
 * STALE_TOKEN when an etcd step reports a revision that does not advance.
 */
export function transition(record: MigrationRecord, event: MigrationEvent, atMs: number): MigrationRecord {
  const rule = migrationRule(record.phase);
  if (rule === undefined) throw refuse(record, event, `closed (${record.phase}): no step is awaited`);
  if (rule.step !== event.step) throw refuse(record, event, `phase ${record.phase} awaits ${rule.step}, not ${event.step}`);
  if (!event.ok) {
    if (rule.failed === undefined) throw refuse(record, event, `${event.step} has no failure path in ${record.phase}: retry it`);
    return enter(record, rule.failed, atMs, record.tokens, event.error);
  }
  if (event.incoming !== undefined && event.step !== 'prepare') throw refuse(record, event, 'only prepare reports an incoming address');
  if (event.onLeaseLoss !== undefined && event.step !== 'perform') throw refuse(record, event, 'only perform reports the lease-loss policy');
  const next = enter(record, rule.ok, atMs, written(record, event));
  return { ...next, ...(event.incoming === undefined ? {} : { incoming: event.incoming }), ...(event.onLeaseLoss === undefined ? {} : { onLeaseLoss: event.onLeaseLoss }) };
}

/**
 * An operator cancels the migration (as `virsh domjobabort` cancels libvirt's): the step the record
 * waits for is taken as failed with MIGRATION_CANCELLED, and the record takes the table's failure
 * path (before `begin` straight to `aborted`; after it through `unmarking`, so the source keeps or
 * re-takes everything and runs on). A record already rolling back, or aborted, comes back as it is:
 * what the cancel asks for happens anyway. Refused (MIGRATION_CONFLICT, nothing changed) once the
 * handoff is past its commit: the destination may run the VM by then, and it can only finish.
 */
export function cancelMigration(record: MigrationRecord, atMs: number): MigrationRecord {
  if (ROLLING_BACK.includes(record.phase)) return record;
  if (!isCancellable(record.phase)) {
    throw new BatonError('MIGRATION_CONFLICT', `migration ${record.id} is past its commit (${record.phase}): the VM runs on ${record.destination}, or is about to; it can no longer be cancelled`, {
      details: { migration: record.id, phase: record.phase },
    });
  }
  const step = migrationRule(record.phase)!.step;
  return transition(record, { step, ok: false, error: { code: 'MIGRATION_CANCELLED', message: `migration ${record.id} was cancelled by an operator` } }, atMs);
}

/** The phases of the two abort paths, and their end. */
const ROLLING_BACK: readonly MigrationPhase[] = ['unmarking', 'discarding', 'returning', 'restoring', 'aborted'];

/**
 * seed 002: a definition change that arrives while the VM is in flight goes to the staged slot,
 * replacing any change staged before it (the newest wins); neither copy of the VM sees it until
 * the migration ends. A settled record stages nothing: the change applies directly.
 */
export function stageDefinition(record: MigrationRecord, definition: VmDefinition, atMs: number): MigrationRecord {
  if (isSettled(record)) throw new BatonError('INVALID_REQUEST', `migration ${record.id} is closed: apply the definition directly`, { details: { migration: record.id } });
  return { ...record, staged: { definition, atMs } };
}

/**
 * Once the record is closed, hand the staged change over to be applied to the surviving VM (on
 * `host`). The caller applies it, then persists the returned record; a crash in between applies
 * the same definition again, which is harmless.
 */
export function takeStagedDefinition(record: MigrationRecord): { record: MigrationRecord; definition: VmDefinition; host: string } | undefined {
  if (!isClosedPhase(record.phase) || record.staged === null) return undefined;
  const host = record.phase === 'done' ? record.destination : record.source;
  return { record: { ...record, staged: null }, definition: record.staged.definition, host };
}
