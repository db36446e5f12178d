import { setTimeout as delay } from 'node:timers/promises';
import {
  asBatonError,
  Backoff,
  BatonError,
  cancelMigration,
  decideReply,
  isCancellable,
  isSettled,
  nextStep,
  OVERLAPS_SAVE,
  raceAbort,
  RETRYABLE_STEP_CODES,
  stageDefinition,
  takeStagedDefinition,
  transition,
  type MigrationCommand,
  type MigrationRecord,
  type MigrationStepReply,
  type VmDefinition,
} from '@baton/core';
import type { StoredMigration } from '@baton/etcd';
import type { MigrationDriverOptions } from './migration-driver.js';

const MAX_RETRY_MS = 1_000;

/** A `stage` call waiting for a save that carries its definition (or a newer one). */
interface StageWaiter {
  staged: MigrationRecord['staged'];
  done: PromiseWithResolvers<StoredMigration>;
}

/**
 * One record driven by the leader until it is settled (MigrationDriver.drive): its steps until it
 * is closed, then the definition staged in flight, if any, applied to the surviving copy.
 *
 * `record` is the record as it stands; `saved` the chain of its saves, each chained after the one
 * before, so they land in order. A record whose next step is an etcd transaction is not saved on
 * its own: it rides inside that transaction. `stage` follows the same rule, so the record keeps
 * one writer: a definition staged while the record waits for an etcd step (in flight or not yet
 * sent) rides with it; otherwise it gets a save of its own on the chain.
 */
export class Drive {
  private record: MigrationRecord;
  private saved: Promise<StoredMigration>;
  private readonly backoff: Backoff;
  /** A record whose next step overlaps its save: saved by `carryOut` once that step is sent. */
  private unsaved: MigrationRecord | undefined;
  private readonly waiters: StageWaiter[] = [];
  /** Why the drive stopped, once it has (NOT_LEADER, the leadership's abort). */
  private failure: unknown;
  /** Its steps may run: the migration slots admitted it. */
  private admitted = false;
  /** Aborted when an operator cancels: ends a wait the cancel makes moot (a slot, a pause, an agent step in flight). */
  private readonly cancelling = new AbortController();
  /** What waits are given while a cancel can still take effect. */
  private readonly cancellable: AbortSignal;
  /** `cancel` calls waiting for the record that carries the cancel to land. */
  private readonly cancels: PromiseWithResolvers<MigrationRecord>[] = [];
  /** The record has taken the cancel (its save may still be under way). */
  private cancelTaken = false;

  constructor(
    initial: StoredMigration,
    private readonly signal: AbortSignal,
    private readonly opts: MigrationDriverOptions,
    /** Its place among the migrations running at once (MigrationSlots): taken before the first step, freed once the record is closed. */
    private readonly slot: { take(signal: AbortSignal): Promise<void>; free(): void },
  ) {
    this.cancellable = AbortSignal.any([signal, this.cancelling.signal]);
    this.record = initial.record;
    this.saved = Promise.resolve(initial);
    this.backoff = new Backoff(opts.retryMs, MAX_RETRY_MS);
  }

  /** The VM whose record this is, while something is left to do for it. */
  get pendingVm(): string | undefined {
    return this.failure === undefined && !isSettled(this.record) ? this.record.vm.uuid : undefined;
  }

  /** Resolves with the settled record as saved; rejects if the signal aborts or another writer took the record (NOT_LEADER). */
  async run(): Promise<StoredMigration> {
    try {
      // A migration cancelled while it waits for a slot never takes one: it ends without a step.
      this.admitted = await this.slot.take(this.cancellable).then(
        () => true,
        (err: unknown) => {
          if (!this.endedByCancel(err)) throw err;
          return false;
        },
      );
      await this.steps();
      // Closed: a staged definition still to apply is no migration, and holds no slot.
      this.slot.free();
      await this.applyStaged();
      return await this.saved;
    } catch (err) {
      this.failure = err;
      for (const w of this.waiters.splice(0)) w.done.reject(asBatonError(err));
      for (const c of this.cancels.splice(0)) c.reject(asBatonError(err));
      throw err;
    }
  }

  /**
   * Stage a definition change (the newest wins), applied when the record closes. Resolves once a
   * save carrying it (or a newer one) has landed (queued or in flight alike); rejects if the drive stops first. Undefined when
   * the record is settled: there is nothing left to stage into, the change applies directly.
   */
  stage(definition: VmDefinition): Promise<StoredMigration> | undefined {
    if (this.failure !== undefined) throw asBatonError(this.failure);
    if (isSettled(this.record)) return undefined;
    this.record = stageDefinition(this.record, definition, this.opts.clock.now());
    const done = Promise.withResolvers<StoredMigration>();
    this.waiters.push({ staged: this.record.staged, done });
    // A queued record's first step (begin, an etcd step) may be far off: it is saved now.
    if (!this.admitted || nextStep(this.record)?.target !== 'etcd') this.chainSave(this.record);
    return done.promise;
  }

  /**
   * An operator cancels the migration. Before the commit it rolls back (`cancelMigration`): a wait
   * the cancel makes moot ends at once (a slot, a pause, an agent step in flight, whose late
   * effect the abort's tokens refuse), an etcd step in flight is waited for; resolves with the
   * record that carries the cancel once it is saved. A record rolling back anyway (or closed
   * aborted) is answered as the leader has it; one past its commit is refused
   * (MIGRATION_CONFLICT), also when the commit lands before the cancel could be taken.
   */
  cancel(): Promise<MigrationRecord> {
    if (this.failure !== undefined) throw asBatonError(this.failure);
    if (this.cancelTaken || !isCancellable(this.record.phase)) {
      // Throws past the commit; otherwise the record rolls back (or has), with or without this cancel.
      return Promise.resolve(cancelMigration(this.record, this.opts.clock.now()));
    }
    const done = Promise.withResolvers<MigrationRecord>();
    this.cancels.push(done);
    this.cancelling.abort(new BatonError('MIGRATION_CANCELLED', `migration ${this.record.id} was cancelled by an operator`));
    return done.promise;
  }

  /**
   * At the top of the drive's loop: a cancel asked for is taken if it still can be (the record
   * moves onto its failure path, saved as the next step's transaction or a save of its own, whose
   * landing answers it). If the commit landed first it is refused; if the record rolls back for a
   * reason of its own, that is the cancel's outcome. True when the record moved.
   */
  private takeCancel(): boolean {
    if (this.cancels.length === 0 || this.cancelTaken) return false;
    const { id, phase, vm, source } = this.record;
    if (isCancellable(phase)) {
      this.cancelTaken = true;
      this.opts.log.warn({ migration: id, phase }, `migration ${id} cancelled by an operator in ${phase}: it rolls back, and ${vm.name} stays on ${source}`);
      this.moveTo(cancelMigration(this.record, this.opts.clock.now()));
      return true;
    }
    const answers = this.cancels.splice(0);
    try {
      const record = cancelMigration(this.record, this.opts.clock.now());
      for (const c of answers) c.resolve(record);
    } catch (err) {
      for (const c of answers) c.reject(asBatonError(err));
    }
    return false;
  }

  /**
   * Each step the record waits for, until it is closed: carried out, its reply fed through
   * `decideReply` and `transition`, the next record saved (or left to ride on its etcd step).
   * `this.record` is read again after every wait: a definition staged meanwhile is carried on.
   */
  private async steps(): Promise<void> {
    const { clock, log } = this.opts;
    for (;;) {
      this.signal.throwIfAborted();
      if (this.takeCancel()) continue;
      const command = nextStep(this.record);
      if (command === undefined) return;
      const reply = await this.carryOut(command).catch((err: unknown) => {
        if (!this.endedByCancel(err)) throw err;
        return undefined;
      });
      // The cancel ended the wait: the loop's top takes it.
      if (reply === undefined) continue;
      const decision = decideReply(this.record, command, reply);
      if (decision.kind === 'stale') continue;
      if (decision.kind === 'retry') {
        log.warn({ migration: this.record.id, step: command.step, code: decision.error.code, retryInMs: this.backoff.ms }, `${command.step} of migration ${this.record.id} did not go through (${decision.error.message}); sending it again`);
        await this.pause();
        continue;
      }
      this.backoff.reset();
      this.moveTo(transition(this.record, decision.event, clock.now()));
    }
  }

  /** The record moves on: saved now, once its next step is sent (OVERLAPS_SAVE), or with that step's etcd transaction. */
  private moveTo(next: MigrationRecord): void {
    const following = nextStep(next);
    if (following !== undefined && OVERLAPS_SAVE.includes(following.step)) this.unsaved = next;
    else if (following?.target !== 'etcd') this.chainSave(next);
    this.record = next;
  }

  /**
   * One step. An etcd step carries the record that asks for it, as it is when the saves before it
   * have landed; an agent step goes once its record is saved, except those in OVERLAPS_SAVE. A
   * lost leadership waits for neither: the next leader sends the step again.
   */
  private async carryOut(command: MigrationCommand): Promise<MigrationStepReply> {
    if (command.target === 'etcd') {
      const base = await this.saved;
      const done = await raceAbort(this.opts.etcd.run(command, { record: this.record, saved: base }), this.signal);
      if (done.saved) {
        this.landed(done.saved, base.record);
        // Nothing was chained meanwhile: the record waited for this step, so a stage rode with it.
        this.saved = Promise.resolve(done.saved);
      }
      return done.reply;
    }
    if (!OVERLAPS_SAVE.includes(command.step)) await this.saved;
    const reply = raceAbort(this.opts.agents.run(this.record, command), this.waitSignal());
    // Only now: the bus sends in a microtask its send queues, and a save started first would go before it.
    if (this.unsaved !== undefined) this.chainSave(this.unsaved);
    this.unsaved = undefined;
    return this.unanswered(command, await reply);
  }

  /**
   * A step nobody answered (a retryable failure) goes again, unless etcd shows it never can
   * (`EtcdSteps.unanswered`: its host's session has ended): then it takes etcd's answer, and the
   * migration moves on instead of waiting for a host that may never come back. A read that fails
   * leaves the reply as it was.
   */
  private async unanswered(command: MigrationCommand, reply: MigrationStepReply): Promise<MigrationStepReply> {
    if (reply.ok || !RETRYABLE_STEP_CODES.includes(reply.error.code)) return reply;
    const answer = await raceAbort(this.opts.etcd.unanswered(this.record, command), this.signal).catch((err: unknown) => {
      if (this.signal.aborted) throw err;
      return undefined;
    });
    if (answer === undefined) return reply;
    const host = command.target === 'etcd' ? undefined : command.host;
    this.opts.log.warn(
      { migration: this.record.id, step: command.step, host, ...(answer.ok ? {} : { code: answer.error.code }) },
      `${command.step} of migration ${this.record.id} unanswered, and ${host} can never answer it: ${answer.ok ? 'taken as done (its copy never held a lease)' : answer.error.message}`,
    );
    return answer;
  }

  /**
   * Closed: a definition staged in flight goes to the surviving copy (the host
   * `takeStagedDefinition` names), only once it is saved, then the record is saved without it. A
   * crash in between applies the same definition again, which is harmless. One staged during the
   * apply goes next. A failed apply keeps the definition staged and is tried again, with a pause
   * that doubles up to a second; a newer definition (staged into this same record) replaces it. A
   * VM that is gone (destroyed since) drops it.
   */
  private async applyStaged(): Promise<void> {
    const { agents, log } = this.opts;
    for (;;) {
      await this.allSaved();
      const taken = takeStagedDefinition(this.record);
      if (taken === undefined) return;
      const { id, vm, staged } = this.record;
      try {
        await raceAbort(agents.define(taken.host, vm.uuid, taken.definition), this.signal);
      } catch (err) {
        if (this.signal.aborted) throw err;
        const e = asBatonError(err);
        // The VM was destroyed since the migration ended, or went with a host an operator declared
        // fenced: there is nothing left to apply it to, and a record kept open for it would refuse
        // the VM's name any new migration for ever.
        const gone = e.code === 'VM_NOT_FOUND' || (RETRYABLE_STEP_CODES.includes(e.code) && (await this.opts.etcd.declaredFenced(this.record, taken.host).catch(() => false)));
        if (gone) {
          log.warn({ migration: id, vm: vm.uuid, host: taken.host }, `the definition staged in migration ${id} is dropped: ${vm.name} is no longer on ${taken.host}`);
          this.record = taken.record;
          this.chainSave(this.record);
          continue;
        }
        const level = RETRYABLE_STEP_CODES.includes(e.code) ? 'warn' : 'error';
        log[level]({ migration: id, vm: vm.uuid, host: taken.host, code: e.code, retryInMs: this.backoff.ms }, `the definition staged in migration ${id} could not be applied to ${vm.name} on ${taken.host} (${e.message}); it stays staged and is tried again`);
        await this.pause();
        continue;
      }
      this.backoff.reset();
      if (this.record.staged !== staged) continue;
      log.info({ migration: id, vm: vm.uuid, host: taken.host }, `the definition staged in migration ${id} was applied to ${vm.name} on ${taken.host}`);
      this.record = taken.record;
      this.chainSave(this.record);
    }
  }

  /** The last save, once every save chained before it, and while waiting, has landed. */
  private async allSaved(): Promise<StoredMigration> {
    for (;;) {
      const last = this.saved;
      const stored = await last;
      if (last === this.saved) return stored;
    }
  }

  private chainSave(record: MigrationRecord): void {
    this.saved = this.saved.then((prev) => this.save(prev, record));
    // Awaited before the next command that needs it, or at the end; never left unobserved.
    this.saved.catch(() => undefined);
  }

  /** Save by compare-on-revision, through etcd hiccups; only another writer's save ends the drive (NOT_LEADER). */
  private async save(prev: StoredMigration, next: MigrationRecord): Promise<StoredMigration> {
    const { store, log, retryMs } = this.opts;
    const saved = await store.saveThrough(prev, next, {
      signal: this.signal,
      retryMs,
      maxRetryMs: MAX_RETRY_MS,
      onUnanswered: (err) => log.warn({ migration: next.id, phase: next.phase, err: err.message }, `saving migration ${next.id} (${next.phase}) did not answer; reading it back`),
    });
    this.landed(saved, prev.record);
    return saved;
  }

  /** A save landed: it is published, and each stage it carries (or supersedes) is answered, and a cancel it carries. */
  private landed(saved: StoredMigration, previous: MigrationRecord): void {
    this.opts.onSaved(saved.record, previous);
    const last = this.waiters.findLastIndex((w) => w.staged === saved.record.staged);
    for (const w of this.waiters.splice(0, last + 1)) w.done.resolve(saved);
    if (this.cancelTaken) for (const c of this.cancels.splice(0)) c.resolve(saved.record);
  }

  /** The signal a wait is given: the cancel ends it too while the record can still be cancelled. */
  private waitSignal(): AbortSignal {
    return isCancellable(this.record.phase) ? this.cancellable : this.signal;
  }

  /** The backoff between two tries of a step; a cancel ends it (the loop's top takes it). */
  private async pause(): Promise<void> {
    await delay(this.backoff.next(), undefined, { signal: this.waitSignal() }).catch((err: unknown) => {
      if (!this.endedByCancel(err)) throw err;
    });
  }

  /** A wait ended by the cancel's abort (the reason itself, or timers' AbortError carrying it), not by anything else. */
  private endedByCancel(err: unknown): boolean {
    const reason: unknown = this.cancelling.signal.reason;
    return !this.signal.aborted && reason !== undefined && (err === reason || (err as { cause?: unknown } | undefined)?.cause === reason);
  }
}

