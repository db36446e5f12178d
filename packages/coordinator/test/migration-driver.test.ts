import { describe, expect, it } from 'vitest';
import {
  BatonError,
  newMigration,
  VmDefinitionSchema,
  type HostedVm,
  type MigrationCommand,
  type MigrationRecord,
  type MigrationStep,
  type MigrationStepReply,
  type VmDefinition,
} from '@baton/core';
import type { StoredMigration } from '@baton/etcd';
import { MigrationDriver, type MigrationDriverOptions } from '../src/saga/migration-driver.js';
import { MigrationLimitsSchema } from '../src/saga/migration-slots.js';

/**
 * The driver's staging of definitions (seed 002) against one record in memory, saved by
 * compare-on-revision as etcd does it: a second writer would show as a refused save. Steps can be
 * held in flight, so a definition can be staged at exactly the moment a test means.
 */

const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const definition = (disk: string): VmDefinition => VmDefinitionSchema.parse({ disks: [{ path: '/images/vm1.img' }, { path: `/images/${disk}.img` }] });

/** One migration record as etcd would keep it, with its collaborators' side of each step. */
class World {
  /** etcd's revision; the record's own (`stored.revision`) moves only when the record is put. */
  revision = 10;
  stored: StoredMigration;
  /** Every record written, in order, and who wrote it (a save of its own, or an etcd step). */
  readonly writes: { record: MigrationRecord; by: 'save' | MigrationStep }[] = [];
  readonly applied: { host: string; definition: VmDefinition }[] = [];
  /** Steps to hold in flight until released; `reached` resolves once the step is under way. */
  private readonly holds = new Map<MigrationStep, { reached: PromiseWithResolvers<void>; release: PromiseWithResolvers<MigrationStepReply | undefined> }>();
  /** Replies to give, once each, before a step succeeds. */
  readonly failures = new Map<MigrationStep, MigrationStepReply[]>();
  /** Errors `vm.define` answers, once each, before it succeeds. */
  readonly defineFailures: BatonError[] = [];
  private defineHold: { reached: PromiseWithResolvers<void>; release: PromiseWithResolvers<void> } | undefined;

  constructor(record: MigrationRecord) {
    this.stored = { record, revision: String(this.revision) };
  }

  hold(step: MigrationStep): { reached: Promise<void>; release: (reply?: MigrationStepReply) => void } {
    const h = { reached: Promise.withResolvers<void>(), release: Promise.withResolvers<MigrationStepReply | undefined>() };
    this.holds.set(step, h);
    return { reached: h.reached.promise, release: (reply) => h.release.resolve(reply) };
  }

  /** The next `vm.define` is held in flight until released. */
  holdDefine(): { reached: Promise<void>; release: () => void } {
    const h = { reached: Promise.withResolvers<void>(), release: Promise.withResolvers<void>() };
    this.defineHold = h;
    return { reached: h.reached.promise, release: () => h.release.resolve() };
  }

  /** Someone else (another leader) writes the record. */
  overwrite(): void {
    this.stored = { record: this.stored.record, revision: String(++this.revision) };
  }

  private write(prev: StoredMigration, record: MigrationRecord, by: 'save' | MigrationStep): StoredMigration {
    if (prev.revision !== this.stored.revision) throw new BatonError('NOT_LEADER', `migration ${record.id} was written by someone else`);
    this.stored = { record, revision: String(++this.revision) };
    this.writes.push({ record, by });
    return this.stored;
  }

  private async step(step: MigrationStep): Promise<MigrationStepReply | undefined> {
    const h = this.holds.get(step);
    this.holds.delete(step);
    h?.reached.resolve();
    const held = await h?.release.promise;
    return held ?? this.failures.get(step)?.shift();
  }

  options(): MigrationDriverOptions {
    return {
      limits: MigrationLimitsSchema.parse({}),
      store: { saveThrough: async (prev, next) => this.write(prev, next, 'save') },
      etcd: {
        run: async (command: MigrationCommand, { record, saved }) => {
          const failed = await this.step(command.step);
          if (failed) return { reply: failed };
          if (saved.revision !== this.stored.revision) throw new BatonError('NOT_LEADER', `migration ${record.id} was written by someone else`);
          // The step's own writes (leases, markers), with the record put in the same transaction when it asks for it.
          const written = record === saved.record ? undefined : this.write(saved, record, command.step);
          const revision = written === undefined ? ++this.revision : this.revision;
          return { reply: command.step === 'begin' ? { ok: true, revision, grants: [1] } : { ok: true, revision }, ...(written === undefined ? {} : { saved: written }) };
        },
        // Every host of this world lives: no step is answered for one, no host is declared fenced.
        unanswered: async () => undefined,
        declaredFenced: async () => false,
      },
      agents: {
        run: async (_record, command) => (await this.step(command.step)) ?? (command.step === 'prepare' ? { ok: true, incoming: '/incoming.sock' } : { ok: true }),
        define: async (host, uuid, def) => {
          const held = this.defineHold;
          this.defineHold = undefined;
          held?.reached.resolve();
          await held?.release.promise;
          const failure = this.defineFailures.shift();
          if (failure) throw failure;
          this.applied.push({ host, definition: def });
          return { uuid, name: 'vm1', pid: 1, state: 'running', seq: 0, host, locks: [] } satisfies HostedVm;
        },
      },
      clock: { now: () => performance.now() },
      log: quiet,
      retryMs: 1,
      onSaved: () => undefined,
    };
  }
}

function begun(): MigrationRecord {
  return newMigration({ id: 'm-1', vm: { uuid: '6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f', name: 'vm1' }, source: 'h1', destination: 'h2', resources: [{ name: '/images/vm1.img', lockspace: 'images', mode: 'exclusive' }] }, 0);
}

function start(world: World, signal = new AbortController().signal): { driver: MigrationDriver; done: Promise<StoredMigration> } {
  const driver = new MigrationDriver(world.options());
  return { driver, done: driver.drive(world.stored, signal) };
}

describe('staging a definition in a migration the driver drives', () => {
  it('during an agent step: saved on its own at once, carried on by every later record, applied on the destination once done', async () => {
    const world = new World(begun());
    const perform = world.hold('perform');
    const { driver, done } = start(world);
    await perform.reached;
    expect(driver.drivingFor('6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f')).toBe('m-1');

    const saved = await driver.stage('m-1', definition('data'))!;
    // Landed while the send is still in flight: a save of its own, on top of the one before.
    expect(saved.record).toMatchObject({ phase: 'performing', staged: { definition: definition('data') } });
    expect(world.writes.at(-1)).toMatchObject({ by: 'save', record: { phase: 'performing' } });
    perform.release();

    const settled = await done;
    expect(settled.record).toMatchObject({ phase: 'done', staged: null });
    expect(world.applied).toEqual([{ host: 'h2', definition: definition('data') }]);
    // Every record between the stage and the apply carried it, the settled one no longer does.
    const after = world.writes.slice(world.writes.findIndex((w) => w.record.staged !== null));
    expect(after.map((w) => [w.record.phase, w.record.staged !== null])).toEqual([
      ['performing', true],
      ['sent', true],
      ['committed', true],
      ['confirming', true],
      ['done', true],
      ['done', false],
    ]);
    expect(driver.drivingFor('6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f')).toBeUndefined();
  });

  it('while an etcd step is in flight: no save of its own; it rides in the transaction that follows', async () => {
    const world = new World(begun());
    const commit = world.hold('commit');
    const { driver, done } = start(world);
    await commit.reached;
    const writes = world.writes.length;
    const staged = driver.stage('m-1', definition('data'))!;
    // The commit goes through etcd unanswered: sent again, now carrying the staged record.
    commit.release({ ok: false, error: { code: 'UNAVAILABLE', message: 'no answer' } });

    const saved = await staged;
    expect(saved.record).toMatchObject({ phase: 'sent', staged: { definition: definition('data') } });
    expect(world.writes[writes]).toMatchObject({ by: 'commit', record: { phase: 'sent', staged: { definition: definition('data') } } });
    expect((await done).record.staged).toBeNull();
    expect(world.applied.map((a) => a.host)).toEqual(['h2']);
  });

  it('keeps the newest of several, applies it on the source after an abort, and tries a refused apply again', async () => {
    const world = new World(begun());
    const perform = world.hold('perform');
    world.defineFailures.push(new BatonError('RESOURCE_NOT_FOUND', 'not yet'), new BatonError('UNAVAILABLE', 'no answer'));
    const { driver, done } = start(world);
    await perform.reached;
    const first = driver.stage('m-1', definition('first'))!;
    const second = driver.stage('m-1', definition('second'))!;
    perform.release({ ok: false, error: { code: 'IO_ERROR', message: 'send failed' } });
    expect((await first).record.staged?.definition).toEqual(definition('first'));
    expect((await second).record.staged?.definition).toEqual(definition('second'));

    const settled = await done;
    expect(settled.record).toMatchObject({ phase: 'aborted', staged: null });
    expect(world.applied).toEqual([{ host: 'h1', definition: definition('second') }]);
  });

  it('resumes a closed record that still holds a staged definition (a new leader), and answers undefined once settled', async () => {
    const record = begun();
    const world = new World({ ...record, phase: 'aborted', timeline: [...record.timeline, { phase: 'aborted', atMs: 1 }], staged: { definition: definition('data'), atMs: 1 } });
    const { driver, done } = start(world);
    const settled = await done;
    expect(settled.record.staged).toBeNull();
    expect(world.applied).toEqual([{ host: 'h1', definition: definition('data') }]);
    expect(world.writes.map((w) => w.by)).toEqual(['save']);
    expect(driver.stage('m-1', definition('late'))).toBeUndefined();
  });

  it('frees its migration slot once the record closes, while its staged definition is still being applied', async () => {
    const world = new World(begun());
    const perform = world.hold('perform');
    const applying = world.holdDefine();
    const signal = new AbortController().signal;
    const driver = new MigrationDriver({ ...world.options(), limits: { perHost: 1, inCluster: 1 } });
    const done = driver.drive(world.stored, signal);
    await perform.reached;
    await driver.stage('m-1', definition('data'));
    perform.release();
    await applying.reached;
    // m-1 is done and applying its definition. Another migration from h1 starts now: this world
    // keeps m-1 only, so its first step is refused (NOT_LEADER), which shows it was admitted.
    const other = { ...begun(), id: 'm-2', vm: { uuid: '0b5c3e9a-7d21-4f6e-8a3b-1c2d3e4f5a6b', name: 'vm2' } };
    const second = driver.drive({ record: other, revision: '1' }, signal).catch((err: unknown) => err);
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(driver.queued).toBe(0);
    expect(await second).toMatchObject({ code: 'NOT_LEADER' });
    applying.release();
    expect((await done).record).toMatchObject({ phase: 'done', staged: null });
  });

  it('rejects a stage (NOT_LEADER) when another writer took the record', async () => {
    const world = new World(begun());
    const perform = world.hold('perform');
    const { driver, done } = start(world);
    await perform.reached;
    world.overwrite();
    const staged = driver.stage('m-1', definition('data'))!;
    perform.release();
    await expect(staged).rejects.toMatchObject({ code: 'NOT_LEADER' });
    await expect(done).rejects.toMatchObject({ code: 'NOT_LEADER' });
    expect(driver.drivingFor('6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f')).toBeUndefined();
    expect(driver.stage('m-1', definition('data'))).toBeUndefined();
  });
});

describe('cancelling a migration the driver drives', () => {
  const phases = (r: MigrationRecord) => r.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`);

  it('during the send: stops waiting for it, rolls back through unmark, discard and restore, and answers once the cancel is saved', async () => {
    const world = new World(begun());
    const perform = world.hold('perform');
    const { driver, done } = start(world);
    await perform.reached;
    const cancelled = await driver.cancel('m-1')!;
    // Saved by the abort's first step (unmark, an etcd transaction), while the send is still held.
    expect(phases(cancelled).at(-1)).toBe('unmarking(MIGRATION_CANCELLED)');
    expect(world.writes.find((w) => w.by === 'unmark')?.record).toEqual(cancelled);
    const settled = await done;
    expect(phases(settled.record)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'unmarking(MIGRATION_CANCELLED)', 'discarding', 'restoring', 'aborted']);
    // A second cancel, and the send's late answer, change nothing.
    perform.release({ ok: true });
    expect(driver.cancel('m-1')).toBeUndefined();
    expect(world.stored.record).toEqual(settled.record);
  });

  it('while it waits for a migration slot: ends aborted without a step', async () => {
    const world = new World(begun());
    const driver = new MigrationDriver({ ...world.options(), limits: { perHost: 1, inCluster: 1 } });
    const signal = new AbortController().signal;
    // Another migration from h1 holds the one slot (its first step is held).
    const held = world.hold('begin');
    const other = driver.drive({ record: { ...begun(), id: 'm-0', vm: { uuid: '0b5c3e9a-7d21-4f6e-8a3b-1c2d3e4f5a6b', name: 'vm0' } }, revision: '1' }, signal).catch((err: unknown) => err);
    const done = driver.drive(world.stored, signal);
    expect(driver.queued).toBe(1);
    const cancelled = await driver.cancel('m-1')!;
    expect(phases(cancelled)).toEqual(['begun', 'aborted(MIGRATION_CANCELLED)']);
    expect(world.writes.map((w) => w.by)).toEqual(['save']);
    expect((await done).record.phase).toBe('aborted');
    expect(driver.queued).toBe(0);
    held.release();
    expect(await other).toMatchObject({ code: 'NOT_LEADER' });
  });

  it('is refused (MIGRATION_CONFLICT) past the commit, and when the commit lands while the cancel waits for it', async () => {
    const world = new World(begun());
    const commit = world.hold('commit');
    const resume = world.hold('resume');
    const { driver, done } = start(world);
    await commit.reached;
    // The commit's transaction is in flight: never abandoned; the cancel waits for its outcome.
    const cancelled = driver.cancel('m-1')!.catch((err: unknown) => err);
    commit.release();
    expect(await cancelled).toMatchObject({ code: 'MIGRATION_CONFLICT', details: { migration: 'm-1', phase: 'committed' } });
    await resume.reached;
    expect(() => driver.cancel('m-1')).toThrow(expect.objectContaining({ code: 'MIGRATION_CONFLICT' }));
    resume.release();
    expect((await done).record.phase).toBe('done');
  });

  it('takes a failure that rolls the migration back first as its outcome', async () => {
    const world = new World(begun());
    const perform = world.hold('perform');
    const unmark = world.hold('unmark');
    const { driver, done } = start(world);
    await perform.reached;
    // The send fails before the cancel arrives: the record rolls back for its own reason.
    perform.release({ ok: false, error: { code: 'IO_ERROR', message: 'send failed' } });
    await unmark.reached;
    const cancelled = await driver.cancel('m-1')!;
    expect(phases(cancelled).at(-1)).toBe('unmarking(IO_ERROR)');
    unmark.release();
    expect(phases((await done).record)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'unmarking(IO_ERROR)', 'discarding', 'restoring', 'aborted']);
  });
});
