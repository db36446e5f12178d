import { setTimeout as delay } from 'node:timers/promises';
import { decideReply, nextStep, takeStagedDefinition, transition, type MigrationCommand, type MigrationStepReply, type MonotonicClock } from '@baton/core';
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
 * Drives one migration record to its end, as the leader: asks `nextStep` what the record waits
 * for, carries it out, feeds the reply through `decideReply` and `transition`, and saves the next
 * record by compare-on-revision before anything else is sent. A crash (or a lost leadership) loses
 * only the step in flight: the next leader reads the record and sends that step again.
 */
export class MigrationDriver {
  constructor(private readonly opts: MigrationDriverOptions) {}

  private execute(stored: StoredMigration, command: MigrationCommand): Promise<MigrationStepReply> {
    return command.target === 'etcd' ? this.opts.etcd.run(stored.record, command) : this.opts.agents.run(stored.record, command);
  }

  /** Resolves with the closed (and settled) record; rejects if `signal` aborts or another writer took the record (NOT_LEADER). */
  async drive(initial: StoredMigration, signal: AbortSignal): Promise<StoredMigration> {
    const { clock, log } = this.opts;
    let stored = initial;
    let retryMs = this.opts.retryMs;
    for (;;) {
      signal.throwIfAborted();
      const command = nextStep(stored.record);
      if (command === undefined) {
        // seed 002: a definition staged during the migration goes to the surviving copy only now.
        const taken = takeStagedDefinition(stored.record);
        if (taken === undefined) return stored;
        log.info({ migration: stored.record.id, host: taken.host }, `applying the definition staged during migration ${stored.record.id} to the copy on ${taken.host}`);
        stored = await this.save(stored, taken.record);
        continue;
      }
      // A lost leadership does not wait for a slow agent: the next leader sends the step again.
      const reply = await raceAbort(this.execute(stored, command), signal);
      const decision = decideReply(stored.record, command, reply);
      if (decision.kind === 'stale') continue;
      if (decision.kind === 'retry') {
        log.warn({ migration: stored.record.id, step: command.step, code: decision.error.code, retryInMs: retryMs }, `${command.step} of migration ${stored.record.id} did not go through (${decision.error.message}); sending it again`);
        await delay(retryMs, undefined, { signal });
        retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
        continue;
      }
      retryMs = this.opts.retryMs;
      stored = await this.save(stored, transition(stored.record, decision.event, clock.now()));
    }
  }

  private async save(prev: StoredMigration, next: StoredMigration['record']): Promise<StoredMigration> {
    const saved = await this.opts.store.save(prev, next);
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
