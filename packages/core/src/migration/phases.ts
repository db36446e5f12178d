/**
 * The phases of a migration record (DESIGN §6) and the one table that says how each moves on.
 *
 * Every open phase waits for exactly one step. The step's success leads to `ok`; its definite
 * failure leads to `failed`. A phase without `failed` has no way out but forward: its step is
 * retried until it succeeds (an abort half done must be finished, never abandoned).
 *
 *   begun ─begin→ preparing ─prepare→ prepared ─mark→ performing ─perform→ sent ─commit→
 *   committed ─resume→ confirming ─confirm→ done
 *
 *   before commit:  unmarking ─unmark→ discarding ─discard→ restoring ─restore→ aborted
 *   after commit:   returning ─give-back→ restoring ─restore→ aborted
 *
 * The two abort paths differ in order on purpose. Before commit the destination cannot run (it
 * has no token), so etcd is written first: the new revision fences every late `prepare`, which
 * could otherwise re-create an incoming VM after `discard`. After commit the destination could
 * run, so it must have given up (its failed `resume` destroyed its copy) before the leases go
 * back.
 */
export const MIGRATION_PHASES = [
  'begun',
  'preparing',
  'prepared',
  'performing',
  'sent',
  'committed',
  'confirming',
  'done',
  'unmarking',
  'discarding',
  'returning',
  'restoring',
  'aborted',
] as const;
export type MigrationPhase = (typeof MIGRATION_PHASES)[number];

export const CLOSED_PHASES = ['done', 'aborted'] as const satisfies readonly MigrationPhase[];
export type ClosedPhase = (typeof CLOSED_PHASES)[number];
export type OpenPhase = Exclude<MigrationPhase, ClosedPhase>;

export const MIGRATION_STEPS = ['begin', 'prepare', 'mark', 'perform', 'commit', 'resume', 'confirm', 'unmark', 'discard', 'give-back', 'restore'] as const;
export type MigrationStep = (typeof MIGRATION_STEPS)[number];

/** Who carries a step out: the coordinator in one etcd transaction, or an agent over NATS. */
export type MigrationTarget = 'etcd' | 'source' | 'destination';

export interface MigrationRule {
  readonly step: MigrationStep;
  readonly target: MigrationTarget;
  readonly ok: MigrationPhase;
  readonly failed?: MigrationPhase;
}

export const MIGRATION_TRANSITIONS: { readonly [P in OpenPhase]: MigrationRule } = {
  // Validation refused (leases not the source's, or already in another handoff): nothing written.
  begun: { step: 'begin', target: 'etcd', ok: 'preparing', failed: 'aborted' },
  // The destination cannot create the incoming VM or cannot open a lock file.
  preparing: { step: 'prepare', target: 'destination', ok: 'prepared', failed: 'unmarking' },
  prepared: { step: 'mark', target: 'etcd', ok: 'performing', failed: 'unmarking' },
  // The send failed: the source never stopped holding anything (S4).
  performing: { step: 'perform', target: 'source', ok: 'sent', failed: 'unmarking' },
  sent: { step: 'commit', target: 'etcd', ok: 'committed', failed: 'unmarking' },
  // The destination could not take its locks with the commit token: it never unpaused (S5).
  committed: { step: 'resume', target: 'destination', ok: 'confirming', failed: 'returning' },
  confirming: { step: 'confirm', target: 'source', ok: 'done' },
  unmarking: { step: 'unmark', target: 'etcd', ok: 'discarding' },
  discarding: { step: 'discard', target: 'destination', ok: 'restoring' },
  returning: { step: 'give-back', target: 'etcd', ok: 'restoring' },
  restoring: { step: 'restore', target: 'source', ok: 'aborted' },
};

/**
 * Where an operator's cancel takes effect: every phase before the commit. Up to it the destination
 * holds no token and cannot run the VM (S5), so the step the record waits for may be taken as
 * failed and the migration rolls back along the table's failure path, whatever the step in flight
 * still does (a late command is refused: the abort's first write moves the revision on). From
 * `committed` on the destination may already run: the migration is finished, never cancelled.
 */
export const CANCELLABLE_PHASES = ['begun', 'preparing', 'prepared', 'performing', 'sent'] as const satisfies readonly OpenPhase[];

export function isCancellable(phase: MigrationPhase): boolean {
  return (CANCELLABLE_PHASES as readonly MigrationPhase[]).includes(phase);
}

export function isClosedPhase(phase: MigrationPhase): phase is ClosedPhase {
  return (CLOSED_PHASES as readonly MigrationPhase[]).includes(phase);
}

/** The rule of an open phase; undefined for a closed one. */
export function migrationRule(phase: MigrationPhase): MigrationRule | undefined {
  return isClosedPhase(phase) ? undefined : MIGRATION_TRANSITIONS[phase];
}

/** The token slots of a record, and which etcd step fills which one. */
export const MIGRATION_TOKEN_SLOTS = ['begin', 'prepare', 'commit', 'revert'] as const;
export type MigrationTokenSlot = (typeof MIGRATION_TOKEN_SLOTS)[number];

export const MIGRATION_STEP_WRITES: Partial<Record<MigrationStep, MigrationTokenSlot>> = {
  begin: 'begin',
  mark: 'prepare',
  commit: 'commit',
  unmark: 'revert',
  'give-back': 'revert',
};

/**
 * The slots a record must have filled to be in a phase, so a record read back from etcd that
 * could not be driven on is refused at the boundary rather than half-way through a step.
 */
export const MIGRATION_PHASE_NEEDS: { readonly [P in MigrationPhase]: readonly MigrationTokenSlot[] } = {
  begun: [],
  preparing: ['begin'],
  prepared: ['begin'],
  performing: ['begin', 'prepare'],
  sent: ['begin', 'prepare'],
  committed: ['begin', 'prepare', 'commit'],
  confirming: ['begin', 'prepare', 'commit'],
  done: ['begin', 'prepare', 'commit'],
  unmarking: ['begin'],
  discarding: ['begin', 'revert'],
  returning: ['begin', 'prepare', 'commit'],
  restoring: ['begin', 'revert'],
  // An aborted record either never began (validation refused) or went through restoring.
  aborted: [],
};

/**
 * How many steps a record in `phase` still has to take if each succeeds: the length of the `ok`
 * path to its closed phase. With the steps already taken it makes a progress measure that stays
 * honest on the abort paths, which are shorter than the handoff and start part-way through it.
 */
export function stepsLeft(phase: MigrationPhase): number {
  let n = 0;
  for (let rule = migrationRule(phase); rule !== undefined; rule = migrationRule(rule.ok)) n++;
  return n;
}
