import type { JsonEvent, JsonProcess } from './json-process.js';
import { waitFor } from './wait-for.js';

/**
 * The host's CLOCK_MONOTONIC in ms, the clock the agents and sim VMs decide by (core's
 * systemClock): times taken here compare directly with a VM's disk records and an agent's deadlines.
 */
export function monoNow(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export interface StampedEvent {
  /** When the test first saw the event (host-monotonic ms): an upper bound on when it was emitted. */
  at: number;
  e: JsonEvent;
}

/**
 * Watches a JSON-lines process (a sim VM) and stamps each event with the time the test first saw it,
 * polling every few ms. For a process with few events (the ring buffer of JsonProcess never wraps).
 */
export class StampedEvents implements Disposable {
  readonly events: StampedEvent[] = [];
  private seen = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly proc: JsonProcess,
    pollMs = 2,
  ) {
    this.timer = setInterval(() => this.poll(), pollMs);
    this.poll();
  }

  poll(): void {
    const all = this.proc.events();
    const now = monoNow();
    for (let i = this.seen; i < all.length; i++) this.events.push({ at: now, e: all[i]! });
    this.seen = Math.max(this.seen, all.length);
  }

  find(match: (e: JsonEvent) => boolean): StampedEvent | undefined {
    this.poll();
    return this.events.find((s) => match(s.e));
  }

  filter(match: (e: JsonEvent) => boolean): StampedEvent[] {
    this.poll();
    return this.events.filter((s) => match(s.e));
  }

  /** The first matching event; fails early, with the output, if the process exits first. */
  wait(match: (e: JsonEvent) => boolean, what: string, deadlineMs = 10_000): Promise<StampedEvent> {
    return waitFor(
      () => {
        const found = this.find(match);
        if (found) return found;
        if (!this.proc.proc.running) {
          this.poll();
          const late = this.events.find((s) => match(s.e));
          if (late) return late;
          throw new Error(`${this.proc.proc.name} exited (${JSON.stringify(this.proc.proc.exitInfo)}) before ${what}; output:\n${this.proc.proc.output().slice(-4000)}`);
        }
        return false;
      },
      { what: `${this.proc.proc.name}: ${what}`, deadlineMs, intervalMs: 2 },
    );
  }

  [Symbol.dispose](): void {
    clearInterval(this.timer);
  }
}
