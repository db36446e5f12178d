import { setTimeout as delay } from 'node:timers/promises';
import { decideReply, nextStep, transition, type MigrationRecord, type MigrationStep, type MigrationStepReply, type MonotonicClock } from '@baton/core';
import type { MigrationStore, StoredMigration } from '@baton/etcd';
import type { Log } from '../log.js';
import type { AgentSteps } from './agent-steps.js';
import type { EtcdSteps } from './etcd-steps.js';

export interface MigrationDriverOptions {
  store: MigrationStore;
  etcd: EtcdSteps;
  agents: AgentSteps;
  clock: MonotonicClock;
  log: Log;
  retryMs: number;
  /** Every record saved, with the one it replaced (events, metrics). */
  onSaved(record: StoredMigration['record'], previous: StoredMigration['record']): void;
}

const MAX_RETRY_MS = 1_000;

/**
 * Steps sent while the record that asks for them is still being saved, because they lie on the
 * handoff's critical path (source paused → destination running) and are safe early: `resume`
 * runs the VM only where etcd itself says the destination holds every lease with its token, so a
 * duplicate or a deposed leader's copy can do no harm; and a leader that dies before the save
 * lands leaves `sent`, whose commit a successor re-issues and recognises as its own.
 */
export const OVERLAPS_SAVE: readonly MigrationStep[] = ['resume'];

/**
 * Drives one migration record to its end, as the leader: asks `nextStep` what the record waits
 * for, carries it out, feeds the reply through `decideReply` and `transition`, and saves the next
 * record by compare-on-revision. A record whose step is an etcd transaction is saved by that
 * transaction (it compares the last save's revision and puts the record), not by a write of its
 * own. A crash (or a lost leadership) loses only the step in flight: the next leader reads the
 * record and sends that step again.
 */
export class MigrationDriver {
  constructor(private readonly opts: MigrationDriverOptions) {}

  /**
   * Resolves with the closed record as saved; rejects if `signal` aborts or another writer took
   * the record (NOT_LEADER). Every command goes out after the record that asks for it is saved
   * (or with it, for etcd steps), except those in OVERLAPS_SAVE, which need not wait for it.
   */
  async drive(initial: StoredMigration, signal: AbortSignal): Promise<StoredMigration> {
    const { clock, log } = this.opts;
    let record = initial.record;
    let saved: Promise<StoredMigration> = Promise.resolve(initial);
    let retryMs = this.opts.retryMs;
    for (;;) {
      signal.throwIfAborted();
      const command = nextStep(record);
      if (command === undefined) return saved;
      let reply: MigrationStepReply;
      if (command.target === 'etcd') {
        const base = await saved;
        // A lost leadership does not wait for etcd either: the next leader sends the step again.
        const done = await raceAbort(this.opts.etcd.run(command, { record, saved: base }), signal);
        if (done.saved) {
          this.opts.onSaved(done.saved.record, base.record);
          saved = Promise.resolve(done.saved);
        }
        reply = done.reply;
      } else {
        if (!OVERLAPS_SAVE.includes(command.step)) await saved;
        // A lost leadership does not wait for a slow agent: the next leader sends the step again.
        reply = await raceAbort(this.opts.agents.run(record, command), signal);
      }
      const decision = decideReply(record, command, reply);
      if (decision.kind === 'stale') continue;
      if (decision.kind === 'retry') {
        log.warn({ migration: record.id, step: command.step, code: decision.error.code, retryInMs: retryMs }, `${command.step} of migration ${record.id} did not go through (${decision.error.message}); sending it again`);
        await delay(retryMs, undefined, { signal });
        retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
        continue;
      }
      retryMs = this.opts.retryMs;
      const next = transition(record, decision.event, clock.now());
      if (nextStep(next)?.target !== 'etcd') {
        saved = saved.then((prev) => this.save(prev, next, signal));
        // Awaited before the next command that needs it, or returned; never left unobserved.
        saved.catch(() => undefined);
      }
      record = next;
    }
  }

  /** Save by compare-on-revision, through etcd hiccups; only another writer's save ends the drive (NOT_LEADER). */
  private async save(prev: StoredMigration, next: MigrationRecord, signal: AbortSignal): Promise<StoredMigration> {
    const { store, log, retryMs } = this.opts;
    const saved = await store.saveThrough(prev, next, {
      signal,
      retryMs,
      maxRetryMs: MAX_RETRY_MS,
      onUnanswered: (err) => log.warn({ migration: next.id, phase: next.phase, err: err.message }, `saving migration ${next.id} (${next.phase}) did not answer; reading it back`),
    });
    this.opts.onSaved(saved.record, prev.record);
    return saved;
  }
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted();
  return new Promise<T>((resolve, reject) => {
    const abort = (): void => reject(signal.reason);
    signal.addEventListener('abort', abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', abort));
  });
}
