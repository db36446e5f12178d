import { performance } from 'node:perf_hooks';

/**
 * Time for decisions. Every lease and liveness decision reads a monotonic clock, injected, never
 * the wall clock: a wall clock that jumps would shorten or stretch a lease.
 */
export interface MonotonicClock {
  /** Milliseconds since an arbitrary origin; never goes backwards. */
  now(): number;
}

export const systemClock: MonotonicClock = { now: () => performance.now() };

/** For logs and records shown to people: wall-clock time as ISO 8601, never used to decide. */
export function wallTimeIso(): string {
  return new Date().toISOString();
}
