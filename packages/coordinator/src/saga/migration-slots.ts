import { z } from 'zod';

/**
 * How many migrations may run at once, as KubeVirt's parallelOutboundMigrationsPerNode and
 * parallelMigrationsPerCluster (2 and 5 by default) and vSphere's concurrent vMotions per host
 * limit them. Baton counts a host's migrations in both directions, not only outbound: they share
 * its network and CPU either way, and each slows the switchover of the others (a paused VM waits
 * on whatever its hosts are busy with).
 */
export const MigrationLimitsSchema = z
  .strictObject({
    /** Migrations a host takes part in at once, as source or destination. */
    perHost: z.number().int().positive().default(2),
    /** Migrations running at once in the whole cluster. */
    inCluster: z.number().int().positive().default(5),
  })
  .prefault({});
export type MigrationLimits = z.infer<typeof MigrationLimitsSchema>;

interface Ends {
  source: string;
  destination: string;
}

interface Waiter {
  id: string;
  ends: Ends;
  admit(): void;
}

/**
 * The leader's admission of migrations to run. A migration waits (its record stays `begun`, no
 * step taken) until both its hosts and the cluster are under their limits; waiters are admitted in
 * the order they came, each one that fits, so one waiting for a busy host holds back no migration
 * between idle hosts. A migration already under way when this leader took over is never held back
 * (`hold`), even past the limits: stopping it half-way would keep its VM paused longer, not less.
 */
export class MigrationSlots {
  private readonly running = new Map<string, Ends>();
  private readonly waiting: Waiter[] = [];

  constructor(private readonly limits: MigrationLimits) {}

  get queued(): number {
    return this.waiting.length;
  }

  /** Why `ends` cannot start now, or undefined if it can. */
  busy(ends: Ends): string | undefined {
    if (this.running.size >= this.limits.inCluster) return `${this.running.size} migrations run in the cluster (limit ${this.limits.inCluster})`;
    for (const host of [ends.source, ends.destination]) {
      const n = [...this.running.values()].filter((e) => e.source === host || e.destination === host).length;
      if (n >= this.limits.perHost) return `${host} takes part in ${n} migrations (limit ${this.limits.perHost})`;
    }
    return undefined;
  }

  /** Count a migration that runs already, whatever the limits say. */
  hold(id: string, ends: Ends): void {
    this.running.set(id, ends);
  }

  /** Resolves once the migration may run; rejects with the signal's reason if it aborts first. */
  acquire(id: string, ends: Ends, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        id,
        ends,
        admit: () => {
          signal.removeEventListener('abort', abort);
          resolve();
        },
      };
      const abort = (): void => {
        this.waiting.splice(this.waiting.indexOf(waiter), 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', abort, { once: true });
      this.waiting.push(waiter);
      this.admit();
    });
  }

  /** The migration no longer runs (settled, or this replica stopped driving it). Idempotent. */
  release(id: string): void {
    if (this.running.delete(id)) this.admit();
  }

  private admit(): void {
    for (let i = 0; i < this.waiting.length; ) {
      const w = this.waiting[i]!;
      if (this.busy(w.ends) !== undefined) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.running.set(w.id, w.ends);
      w.admit();
    }
  }
}
