import { z } from 'zod';
import { ERROR_CODES, type ErrorCode } from '../errors.js';
import { compareTokens, type Token } from '../fencing.js';
import { LOCK_MODES, UUID } from '../model.js';
import { MAX_RESOURCES_PER_REQUEST } from '../wire/agent-api.js';
import { parseOrRefuse } from '../wire/envelope.js';
import { LeaseLossSchema, type LeaseLoss } from '../wire/cluster.js';
import { VmDefinitionSchema } from '../wire/vm-definition.js';
import { MIGRATION_PHASES, MIGRATION_PHASE_NEEDS, MIGRATION_TOKEN_SLOTS, isClosedPhase } from './phases.js';

/**
 * A migration as the coordinator persists it in etcd: plain JSON, so a new leader reads it back
 * and resumes where the old one stopped. Everything that decides what happens next is here.
 */

export const MIGRATION_RECORD_VERSION = 1 as const;

const TokenSchema = z.number().int().positive();
const HostSchema = z.string().min(1).max(253);

/**
 * Revisions written by the migration's own etcd transactions, each larger than the one before
 * (S2). Every command is conditioned on the newest of them, so a command from an earlier step
 * carries an older revision and is refused.
 */
export const MigrationTokensSchema = z.strictObject({
  /** The source's grant token of each resource, in the order of `resources`, read at begin. */
  grants: z.array(TokenSchema).optional(),
  /** The begin transaction: the leases reserved for this migration, still held by the source. */
  begin: TokenSchema.optional(),
  /** The mark transaction (prepare): handoff → destination. `perform` and `commit` depend on it. */
  prepare: TokenSchema.optional(),
  /** The commit transaction: the destination's token for every lease. */
  commit: TokenSchema.optional(),
  /** The unmark or give-back transaction; after give-back, the source's new token. */
  revert: TokenSchema.optional(),
});
export type MigrationTokens = z.infer<typeof MigrationTokensSchema>;

export const TimelineEntrySchema = z.strictObject({
  phase: z.enum(MIGRATION_PHASES),
  /** The caller's monotonic clock: comparable within one leader's entries, not across a failover. */
  atMs: z.number().nonnegative(),
  /** The failure that led into this phase, if one did. */
  error: z.enum(ERROR_CODES as [ErrorCode, ...ErrorCode[]]).optional(),
});
export type TimelineEntry = z.infer<typeof TimelineEntrySchema>;

export const MigrationResourceSchema = z.strictObject({
  name: z.string().min(1).max(4096),
  lockspace: z.string().min(1).max(64),
  mode: z.enum(LOCK_MODES),
});

export const MigrationRecordSchema = z
  .strictObject({
    version: z.literal(MIGRATION_RECORD_VERSION),
    id: z.string().min(1).max(128),
    vm: z.strictObject({ uuid: UUID, name: z.string().min(1).max(256) }),
    source: HostSchema,
    destination: HostSchema,
    resources: z.array(MigrationResourceSchema).min(1).max(MAX_RESOURCES_PER_REQUEST),
    phase: z.enum(MIGRATION_PHASES),
    tokens: MigrationTokensSchema,
    timeline: z.array(TimelineEntrySchema).min(1),
    /**
     * seed 002's `newdef`: a definition change that arrived while the VM was in flight. It is
     * never applied to either copy during the handoff, only to the surviving one at the end.
     */
    staged: z.strictObject({ definition: VmDefinitionSchema, atMs: z.number().nonnegative() }).nullable(),
    /** Where the source sends the VM's state: the destination's answer to prepare (a socket, a URI). */
    incoming: z.string().min(1).max(4096).nullable().default(null),
    /**
     * The VM's lease-loss policy, which travels with it: first as its leases were granted, then as
     * the source ran it when it sent the VM (perform's answer). The destination runs the VM under
     * it and the moved leases carry it, so a restarted agent re-adopts the VM with it too.
     */
    onLeaseLoss: LeaseLossSchema.nullable().default(null),
    /** Wall-clock start, for people and for ordering lists across leaders; never used to decide. */
    startedAt: z.string().max(64).optional(),
  })
  .superRefine((r, ctx) => {
    const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path, message });
    if (r.source === r.destination) issue(['destination'], 'the destination must differ from the source');
    if (r.tokens.grants !== undefined && r.tokens.grants.length !== r.resources.length) issue(['tokens', 'grants'], 'one grant token per resource');
    if ((r.tokens.begin === undefined) !== (r.tokens.grants === undefined)) issue(['tokens'], 'begin and grants are written together');
    if (r.tokens.grants?.some((g) => r.tokens.begin !== undefined && compareTokens(g, r.tokens.begin) >= 0)) issue(['tokens', 'grants'], 'grants are older than begin');
    for (const slot of MIGRATION_PHASE_NEEDS[r.phase]) if (r.tokens[slot] === undefined) issue(['tokens', slot], `phase ${r.phase} needs it`);
    if (r.phase === 'aborted' && r.tokens.begin !== undefined && r.tokens.revert === undefined) issue(['tokens', 'revert'], 'a begun migration aborts through a revert');
    const written = MIGRATION_TOKEN_SLOTS.flatMap((slot) => (r.tokens[slot] === undefined ? [] : [r.tokens[slot]]));
    if (written.some((t, i) => i > 0 && compareTokens(t, written[i - 1]!) <= 0)) issue(['tokens'], 'revisions must increase from begin to revert');
    if (r.timeline.at(-1)?.phase !== r.phase) issue(['timeline'], 'the last entry must be the current phase');
  });
export type MigrationRecord = z.infer<typeof MigrationRecordSchema>;

export interface MigrationRequest {
  id: string;
  vm: MigrationRecord['vm'];
  source: string;
  destination: string;
  resources: MigrationRecord['resources'];
  /** The policy the VM's leases were granted with, if they name one. */
  onLeaseLoss?: LeaseLoss;
  startedAt?: string;
}

/** A new record in `begun`; a bad request is refused with INVALID_REQUEST naming every bad field. */
export function newMigration(request: MigrationRequest, atMs: number): MigrationRecord {
  const record = { version: MIGRATION_RECORD_VERSION, ...request, phase: 'begun', tokens: {}, timeline: [{ phase: 'begun', atMs }], staged: null, incoming: null, onLeaseLoss: request.onLeaseLoss ?? null };
  return parseOrRefuse(MigrationRecordSchema, record, 'invalid migration request');
}

/** A record read back from etcd. One that could not be driven on is refused whole (STATE_INVALID). */
export function parseMigrationRecord(value: unknown): MigrationRecord {
  return parseOrRefuse(MigrationRecordSchema, value, 'migration record is not valid', 'STATE_INVALID');
}

/** The revision every command of the current step is conditioned on: the newest one written (0 before begin). */
export function currentRevision(record: MigrationRecord): Token {
  return MIGRATION_TOKEN_SLOTS.reduce<Token>((newest, slot) => record.tokens[slot] ?? newest, 0);
}

/**
 * The order migrations were asked for: by the wall clock of the replicas that took them (their
 * monotonic clocks differ after a failover), then by the first timeline entry. For lists and
 * queues, never a lease decision.
 */
export function compareByStart(a: MigrationRecord, b: MigrationRecord): number {
  return (a.startedAt ?? '').localeCompare(b.startedAt ?? '') || a.timeline[0]!.atMs - b.timeline[0]!.atMs;
}

/** Closed, and no staged definition left to apply: nothing remains to do for this record. */
export function isSettled(record: MigrationRecord): boolean {
  return isClosedPhase(record.phase) && record.staged === null;
}
