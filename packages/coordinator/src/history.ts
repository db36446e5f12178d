import { setTimeout as delay } from 'node:timers/promises';
import { Backoff, compareByStart, isSettled, parseMigrationRecord, type MigrationRecord } from '@baton/core';
import type { Bus } from '@baton/bus';
import type { MigrationStore } from '@baton/etcd';
import type { HistoryConfig } from './config.js';
import type { Log } from './log.js';

const DAY_MS = 86_400_000;

/**
 * Where migrations are kept once they have ended. Every saved version of a record is published
 * on `events.migration.<id>`; a JetStream stream over the events keeps them, so the history
 * outlives the coordinator and etcd's copy. etcd keeps every open record and the newest
 * `keepClosed` settled ones: a leader lists them all when it is elected, and etcd is no archive.
 * An older settled record leaves etcd only once its last version is stored in the stream (a
 * publish JetStream acknowledged), from where it is read back by id. Without JetStream nothing is
 * removed.
 */
export class MigrationHistory {
  readonly stream: string;
  private ready = false;
  private pruning: Promise<void> | undefined;
  private pruneAgain = false;
  /**
   * Settled records in etcd as this leader knows them: counted in the list it read when elected,
   * one more per migration it ends. Only a count above `keepClosed` lists the records again.
   */
  private settled = 0;

  constructor(
    private readonly opts: { bus: Bus; store: MigrationStore; config: HistoryConfig; cluster: string; log: Log },
  ) {
    this.stream = opts.config.stream ?? `BATON_${opts.cluster}`;
  }

  private subject(id: string): string {
    return this.opts.bus.subjects.event('migration', id);
  }

  /** A saved version of a record: published (the stream keeps it, when there is one). */
  saved(record: MigrationRecord): void {
    this.opts.bus.publish(this.subject(record.id), record);
  }

  /**
   * Leader, elected with `settled` settled records in etcd: make sure the stream exists, tried
   * again (up to every 30 s) until it does or `signal` aborts, then prune.
   */
  async keep(signal: AbortSignal, settled: number): Promise<void> {
    const { bus, config, log } = this.opts;
    this.settled = settled;
    const backoff = new Backoff(1_000, 30_000);
    while (!this.ready && !signal.aborted) {
      try {
        await bus.ensureHistory(this.stream, { maxAgeMs: config.maxAgeDays * DAY_MS });
        this.ready = true;
      } catch (err) {
        log.warn({ stream: this.stream, err: (err as Error).message }, `no migration history in JetStream yet (settled records stay in etcd): ${(err as Error).message}`);
        await delay(backoff.next(), undefined, { signal }).catch(() => undefined);
      }
    }
    await this.prune(signal);
  }

  /** A migration this leader drove has settled. */
  ended(signal: AbortSignal): void {
    this.settled++;
    void this.prune(signal);
  }

  private get overKept(): boolean {
    return this.settled > this.opts.config.keepClosed;
  }

  /** Remove settled records beyond `keepClosed` from etcd, oldest first. Calls that overlap one under way run once more after it. */
  private prune(signal: AbortSignal): Promise<void> {
    if (!this.ready || !this.overKept) return Promise.resolve();
    if (this.pruning) {
      this.pruneAgain = true;
      return this.pruning;
    }
    this.pruning = (async () => {
      do {
        this.pruneAgain = false;
        await this.pruneOnce(signal);
      } while (this.pruneAgain && this.overKept && !signal.aborted);
    })()
      .catch((err: unknown) => this.opts.log.warn({ err: (err as Error).message }, `pruning settled migrations failed; tried again after the next one ends: ${(err as Error).message}`))
      .finally(() => (this.pruning = undefined));
    return this.pruning;
  }

  private async pruneOnce(signal: AbortSignal): Promise<void> {
    const { bus, store, config, log } = this.opts;
    const counted = this.settled;
    const settled = (await store.list()).filter((s) => isSettled(s.record)).sort((a, b) => compareByStart(a.record, b.record));
    // The list corrects the count; migrations ended meanwhile stay counted.
    this.settled += settled.length - counted;
    for (const stored of settled.slice(0, Math.max(0, settled.length - config.keepClosed))) {
      if (signal.aborted) return;
      // Stored in the stream before it leaves etcd; the id makes a repeat after a crash a no-op.
      await bus.record(this.subject(stored.record.id), stored.record, { msgId: `${stored.record.id}@${stored.revision}` });
      if (await store.remove(stored)) {
        this.settled--;
        log.debug({ migration: stored.record.id }, `migration ${stored.record.id} moved to the history`);
      }
    }
  }

  /** A record no longer in etcd, as the stream last stored it; undefined when it holds none. */
  async find(id: string): Promise<MigrationRecord | undefined> {
    const event = await this.opts.bus.lastRecorded(this.stream, this.subject(id));
    return event === undefined ? undefined : parseMigrationRecord(event);
  }
}
