import type { MonotonicClock } from '@baton/core';
import { isProcessAlive, signalProcess } from '../sys/index.js';
import type { OwnerRecord, OwnerRegistry } from './owner-registry.js';

export interface LivenessOptions {
  pollMs: number;
  termGraceMs: number;
  clock: MonotonicClock;
  /** Called once an owner's process is gone: its locks may be released now, not before. */
  onGone(record: OwnerRecord, why: string): void;
  onSignal(record: OwnerRecord, signal: NodeJS.Signals): void;
}

/**
 * Watches the processes behind owners. Pid-bound owners are released when their process exits.
 * A connection-bound owner whose connection closed while its process lives is terminated
 * (virtlockd: "must kill it off to make sure it doesn't do nasty stuff"): SIGTERM, SIGKILL after
 * the grace period, and its locks are released only once the process is gone, so a dying VM can
 * never write beside the disk's next holder.
 */
export class LivenessMonitor {
  private readonly timer: NodeJS.Timeout;
  private readonly termSentAt = new Map<string, number>();
  private readonly killed = new Set<string>();
  private closed = false;

  constructor(
    private readonly registry: OwnerRegistry,
    private readonly opts: LivenessOptions,
  ) {
    this.timer = setInterval(() => this.tick(), opts.pollMs);
  }

  /** Begin terminating an owner; if it has no live process, it is gone at once. */
  terminate(record: OwnerRecord, why: string): void {
    record.state = 'terminating';
    if (!this.alive(record)) {
      this.gone(record, why);
      return;
    }
    this.signal(record, 'SIGTERM');
    this.termSentAt.set(record.owner.uuid, this.opts.clock.now());
  }

  tick(): void {
    if (this.closed) return;
    const now = this.opts.clock.now();
    for (const record of this.registry.all()) {
      const terminating = record.state === 'terminating';
      if (record.liveness !== 'pid' && !terminating) continue;
      if (!this.alive(record)) {
        this.gone(record, terminating ? 'terminated' : 'process exited');
        continue;
      }
      const sent = this.termSentAt.get(record.owner.uuid);
      if (terminating && sent !== undefined && now - sent >= this.opts.termGraceMs && !this.killed.has(record.owner.uuid)) {
        this.killed.add(record.owner.uuid);
        this.signal(record, 'SIGKILL');
      }
    }
  }

  private alive(record: OwnerRecord): boolean {
    return record.owner.pid !== undefined && record.startTime !== undefined && isProcessAlive(record.owner.pid, record.startTime);
  }

  private signal(record: OwnerRecord, signal: NodeJS.Signals): void {
    if (signalProcess(record.owner.pid!, signal)) this.opts.onSignal(record, signal);
  }

  private gone(record: OwnerRecord, why: string): void {
    this.termSentAt.delete(record.owner.uuid);
    this.killed.delete(record.owner.uuid);
    this.opts.onGone(record, why);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
  }
}
