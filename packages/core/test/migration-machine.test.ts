import { describe, expect, it } from 'vitest';
import {
  BatonError,
  cancelMigration,
  MIGRATION_PHASES,
  MIGRATION_PHASE_NEEDS,
  MIGRATION_STEPS,
  MIGRATION_STEP_WRITES,
  MigrationRecordSchema,
  VmDefinitionSchema,
  currentRevision,
  decideReply,
  migrationRule,
  newMigration,
  stepsLeft,
  nextStep,
  parseMigrationRecord,
  stageDefinition,
  takeStagedDefinition,
  transition,
  type MigrationEvent,
  type MigrationPhase,
  type MigrationRecord,
  type MigrationStep,
} from '../src/index.js';

const request = {
  id: 'm-7',
  vm: { uuid: '6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f', name: 'vm1' },
  source: 'h1',
  destination: 'h2',
  resources: [
    { name: '/images/vm1.img', lockspace: 'default', mode: 'exclusive' as const },
    { name: '/images/iso.img', lockspace: 'default', mode: 'shared' as const },
  ],
};

/** A valid record in `phase`, with exactly the tokens that phase needs. */
function recordIn(phase: MigrationPhase): MigrationRecord {
  const all = { begin: 10, prepare: 20, commit: 30, revert: 40 };
  const needs = MIGRATION_PHASE_NEEDS[phase];
  const tokens = Object.fromEntries(needs.map((slot) => [slot, all[slot]]));
  const record = { ...newMigration(request, 0), phase, tokens: needs.includes('begin') ? { ...tokens, grants: [3, 4] } : tokens };
  return MigrationRecordSchema.parse({ ...record, timeline: phase === 'begun' ? record.timeline : [...record.timeline, { phase, atMs: 5 }] });
}

/** The success a step reports, with a revision newer than the record's where the step writes one. */
function success(record: MigrationRecord, step: MigrationStep): MigrationEvent {
  const revision = currentRevision(record) + 1;
  if (step === 'begin') return { step, ok: true, revision: 5, grants: [1, 2] };
  return MIGRATION_STEP_WRITES[step] === undefined ? { step, ok: true } : { step, ok: true, revision };
}

const failure = (step: MigrationStep): MigrationEvent => ({ step, ok: false, error: { code: 'IO_ERROR', message: 'send failed' } });

function refusal(fn: () => unknown): BatonError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BatonError) return err;
    throw err;
  }
  throw new Error('not refused');
}

const cases = MIGRATION_PHASES.flatMap((phase) => MIGRATION_STEPS.flatMap((step) => [true, false].map((ok) => ({ phase, step, ok }))));
const legal = cases.filter(({ phase, step, ok }) => {
  const rule = migrationRule(phase);
  return rule?.step === step && (ok || rule.failed !== undefined);
});
const illegal = cases.filter((c) => !legal.includes(c));

describe('the migration transition table', () => {
  it.each(legal)('accepts $step (ok: $ok) in $phase', ({ phase, step, ok }) => {
    const record = recordIn(phase);
    const next = transition(record, ok ? success(record, step) : failure(step), 99);
    const rule = migrationRule(phase)!;
    expect(next.phase).toBe(ok ? rule.ok : rule.failed);
    expect(next.timeline.at(-1)).toEqual(ok ? { phase: next.phase, atMs: 99 } : { phase: next.phase, atMs: 99, error: 'IO_ERROR' });
    // What comes out can be persisted and read back by another leader.
    expect(parseMigrationRecord(JSON.parse(JSON.stringify(next)))).toEqual(next);
  });

  it.each(illegal)('refuses $step (ok: $ok) in $phase with INVALID_REQUEST, changing nothing', ({ phase, step, ok }) => {
    const record = recordIn(phase);
    const before = JSON.stringify(record);
    const err = refusal(() => transition(record, ok ? success(record, step) : failure(step), 99));
    expect(err.code).toBe('INVALID_REQUEST');
    expect(err.details).toMatchObject({ migration: 'm-7', phase, step });
    expect(JSON.stringify(record)).toBe(before);
  });

  it('has every phase reachable from begun, and every open phase leading to a closed one', () => {
    const reach = (from: MigrationPhase[]) => {
      const seen = new Set(from);
      for (const p of seen) for (const n of [migrationRule(p)?.ok, migrationRule(p)?.failed]) if (n !== undefined) seen.add(n);
      return seen;
    };
    expect([...reach(['begun'])].sort()).toEqual([...MIGRATION_PHASES].sort());
    for (const p of MIGRATION_PHASES) expect([...reach([p])].some((q) => q === 'done' || q === 'aborted')).toBe(true);
  });

  it('counts the steps left to the end along each success: 7 for a handoff, and the abort paths from where they start', () => {
    expect(Object.fromEntries(MIGRATION_PHASES.map((p) => [p, stepsLeft(p)]))).toEqual({
      begun: 7, preparing: 6, prepared: 5, performing: 4, sent: 3, committed: 2, confirming: 1, done: 0,
      unmarking: 3, discarding: 2, returning: 2, restoring: 1, aborted: 0,
    });
  });
});

describe('cancel', () => {
  it.each(MIGRATION_PHASES)('in %s: rolls back before the commit, is a no-op once rolling back, and is refused past the commit', (phase) => {
    const record = recordIn(phase);
    const before = JSON.stringify(record);
    const expected = {
      begun: 'aborted', preparing: 'unmarking', prepared: 'unmarking', performing: 'unmarking', sent: 'unmarking',
      committed: 'refused', confirming: 'refused', done: 'refused',
      unmarking: 'as is', discarding: 'as is', returning: 'as is', restoring: 'as is', aborted: 'as is',
    }[phase];
    if (expected === 'refused') {
      const err = refusal(() => cancelMigration(record, 99));
      expect(err).toMatchObject({ code: 'MIGRATION_CONFLICT', details: { migration: 'm-7', phase } });
      expect(err.message).toContain('past its commit');
    } else if (expected === 'as is') {
      expect(cancelMigration(record, 99)).toBe(record);
    } else {
      const next = cancelMigration(record, 99);
      expect(next.phase).toBe(expected);
      expect(next.timeline.at(-1)).toEqual({ phase: expected, atMs: 99, error: 'MIGRATION_CANCELLED' });
      // The tokens stay: the abort's own etcd steps write what they write.
      expect(next.tokens).toEqual(record.tokens);
      expect(parseMigrationRecord(JSON.parse(JSON.stringify(next)))).toEqual(next);
    }
    expect(JSON.stringify(record)).toBe(before);
  });
});

describe('tokens in transitions (S2)', () => {
  it('refuses an etcd step whose revision does not advance, with STALE_TOKEN', () => {
    const record = recordIn('sent');
    expect(refusal(() => transition(record, { step: 'commit', ok: true, revision: 20 }, 0)).code).toBe('STALE_TOKEN');
    expect(refusal(() => transition(record, { step: 'commit', ok: true, revision: 19 }, 0)).code).toBe('STALE_TOKEN');
    expect(transition(record, { step: 'commit', ok: true, revision: 21 }, 0).tokens.commit).toBe(21);
  });

  it('refuses a begin whose grants are not older than its revision, or not one per resource', () => {
    const record = recordIn('begun');
    expect(refusal(() => transition(record, { step: 'begin', ok: true, revision: 5, grants: [4, 5] }, 0)).code).toBe('STALE_TOKEN');
    expect(refusal(() => transition(record, { step: 'begin', ok: true, revision: 5, grants: [4] }, 0)).code).toBe('INVALID_REQUEST');
  });

  it('wants a revision from every etcd step that writes, and none from an agent step', () => {
    expect(refusal(() => transition(recordIn('prepared'), { step: 'mark', ok: true }, 0)).code).toBe('INVALID_REQUEST');
    expect(refusal(() => transition(recordIn('performing'), { step: 'perform', ok: true, revision: 99 }, 0)).code).toBe('INVALID_REQUEST');
    expect(refusal(() => transition(recordIn('prepared'), { step: 'mark', ok: true, revision: 11, grants: [1, 2] }, 0)).code).toBe('INVALID_REQUEST');
  });
});

describe('nextStep and decideReply', () => {
  it('names the target, host and idempotency key of every open phase, and nothing once closed', () => {
    expect(nextStep(recordIn('begun'))).toEqual({ target: 'etcd', step: 'begin', key: { migration: 'm-7', step: 'begin', token: 0 } });
    expect(nextStep(recordIn('preparing'))).toEqual({ target: 'destination', host: 'h2', step: 'prepare', key: { migration: 'm-7', step: 'prepare', token: 10 } });
    expect(nextStep(recordIn('performing'))).toMatchObject({ target: 'source', host: 'h1', key: { token: 20 } });
    expect(nextStep(recordIn('committed'))).toMatchObject({ target: 'destination', step: 'resume', key: { token: 30 } });
    expect(nextStep(recordIn('restoring'))).toMatchObject({ target: 'source', step: 'restore', key: { token: 40 } });
    expect(nextStep(recordIn('done'))).toBeUndefined();
    expect(nextStep(recordIn('aborted'))).toBeUndefined();
  });

  it('ignores a reply to any command but the awaited one', () => {
    const record = recordIn('committed');
    const awaited = nextStep(record)!;
    expect(decideReply(record, { ...awaited, key: { ...awaited.key, token: 20 } }, { ok: true })).toEqual({ kind: 'stale' });
    expect(decideReply(record, { ...awaited, key: { ...awaited.key, step: 'perform' } }, { ok: true })).toEqual({ kind: 'stale' });
    expect(decideReply(record, { ...awaited, key: { ...awaited.key, migration: 'm-6' } }, { ok: true })).toEqual({ kind: 'stale' });
    expect(decideReply(recordIn('done'), awaited, { ok: true })).toEqual({ kind: 'stale' });
  });

  it('retries when the peer may not have acted, or when the phase has no failure path', () => {
    const unavailable = { ok: false as const, error: { code: 'UNAVAILABLE' as const, message: 'no answer' } };
    const busy = { ok: false as const, error: { code: 'RESOURCE_BUSY' as const, message: 'held' } };
    const committed = recordIn('committed');
    expect(decideReply(committed, nextStep(committed)!, unavailable)).toMatchObject({ kind: 'retry' });
    expect(decideReply(committed, nextStep(committed)!, busy)).toEqual({ kind: 'event', event: { step: 'resume', ...busy } });
    const restoring = recordIn('restoring');
    expect(decideReply(restoring, nextStep(restoring)!, busy)).toMatchObject({ kind: 'retry', error: { code: 'RESOURCE_BUSY' } });
    expect(decideReply(restoring, nextStep(restoring)!, { ok: true })).toEqual({ kind: 'event', event: { step: 'restore', ok: true } });
  });
});

describe('staged definitions (seed 002)', () => {
  /** The n-th version of vm1's definition: its disk set grows by one each time. */
  const definition = (n: number) => VmDefinitionSchema.parse({ disks: Array.from({ length: n + 1 }, (_, i) => ({ path: `/images/vm1-${i}.img` })), onLeaseLoss: { policy: 'pause' } });

  it('stages changes while in flight, the newest winning, and hands them over only once closed', () => {
    const staged = stageDefinition(stageDefinition(recordIn('performing'), definition(1), 1), definition(2), 2);
    expect(staged.staged).toEqual({ definition: definition(2), atMs: 2 });
    expect(takeStagedDefinition(staged)).toBeUndefined();
    expect(takeStagedDefinition({ ...staged, phase: 'done' })).toEqual({ record: { ...staged, phase: 'done', staged: null }, definition: definition(2), host: 'h2' });
    expect(takeStagedDefinition({ ...staged, phase: 'aborted' })?.host).toBe('h1');
  });

  it('keeps the staged change through the last step, still stages until it is applied, and refuses once settled', () => {
    const closed = transition(stageDefinition(recordIn('confirming'), definition(1), 1), { step: 'confirm', ok: true }, 3);
    expect(closed).toMatchObject({ phase: 'done', staged: { definition: definition(1) } });
    expect(stageDefinition(closed, definition(2), 4).staged?.definition).toEqual(definition(2));
    expect(refusal(() => stageDefinition(recordIn('done'), definition(1), 1)).code).toBe('INVALID_REQUEST');
  });

  it('stores the staged definition as a VM definition: read back whole, anything else refused', () => {
    const staged = stageDefinition(recordIn('performing'), definition(1), 1);
    expect(parseMigrationRecord(JSON.parse(JSON.stringify(staged)))).toEqual(staged);
    const relative = { ...staged, staged: { definition: { disks: [{ path: 'vm1.img' }] }, atMs: 1 } };
    expect(refusal(() => parseMigrationRecord(relative)).code).toBe('STATE_INVALID');
    expect(refusal(() => parseMigrationRecord({ ...staged, staged: { definition: { memory: 1 }, atMs: 1 } })).code).toBe('STATE_INVALID');
  });
});

describe('the lease-loss policy a migration carries', () => {
  it('starts as the leases were granted, takes what perform reports, and is reported by no other step', () => {
    const begun = newMigration({ ...request, onLeaseLoss: { policy: 'kill' } }, 0);
    expect(begun.onLeaseLoss).toEqual({ policy: 'kill' });
    expect(newMigration(request, 0).onLeaseLoss).toBeNull();
    const sent = transition(recordIn('performing'), { step: 'perform', ok: true, onLeaseLoss: { policy: 'pause' } }, 1);
    expect(sent).toMatchObject({ phase: 'sent', onLeaseLoss: { policy: 'pause' } });
    // A perform that reports nothing (a repeat after the VM was sent) keeps what the record has.
    expect(transition({ ...recordIn('performing'), onLeaseLoss: { policy: 'pause' } }, { step: 'perform', ok: true }, 1).onLeaseLoss).toEqual({ policy: 'pause' });
    const prepare = recordIn('preparing');
    expect(refusal(() => transition(recordIn('begun'), { ...success(recordIn('begun'), 'begin'), onLeaseLoss: { policy: 'pause' } }, 1)).code).toBe('INVALID_REQUEST');
    expect(refusal(() => transition(prepare, { step: 'prepare', ok: true, onLeaseLoss: { policy: 'pause' } }, 1)).code).toBe('INVALID_REQUEST');
  });

  it('reads back a record saved before the field existed as carrying none', () => {
    const { onLeaseLoss: _, ...older } = recordIn('sent');
    expect(parseMigrationRecord(JSON.parse(JSON.stringify(older))).onLeaseLoss).toBeNull();
  });
});

describe('the record at its boundaries', () => {
  it('refuses a request whose source is its destination, naming the field', () => {
    const err = refusal(() => newMigration({ ...request, destination: 'h1' }, 0));
    expect(err.code).toBe('INVALID_REQUEST');
    expect(err.message).toContain('destination');
  });

  it('refuses a persisted record that could not be driven on, with STATE_INVALID', () => {
    const committed = recordIn('committed');
    const broken = [
      { ...committed, tokens: { ...committed.tokens, commit: undefined } },
      { ...committed, tokens: { ...committed.tokens, commit: 15 } },
      { ...committed, tokens: { ...committed.tokens, grants: [3] } },
      { ...committed, timeline: [{ phase: 'begun', atMs: 0 }] },
      { ...recordIn('aborted'), tokens: { grants: [3, 4], begin: 10 } },
      { ...committed, version: 2 },
    ];
    for (const value of broken) expect(refusal(() => parseMigrationRecord(JSON.parse(JSON.stringify(value)))).code).toBe('STATE_INVALID');
  });
});
