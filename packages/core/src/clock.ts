/**
 * Time for decisions. Every lease and liveness decision reads a monotonic clock, injected, never
 * the wall clock: a wall clock that jumps would shorten or stretch a lease.
 */
export interface MonotonicClock {
  /** Milliseconds since an arbitrary origin; never goes backwards. */
  now(): number;
}

/**
 * CLOCK_MONOTONIC, the host's own: unlike `performance.now()` its origin is the host's boot, not
 * the process's start, so a deadline the agent hands a VM process means the same instant there,
 * and survives the agent's re-exec.
 */
export const systemClock: MonotonicClock = { now: () => Number(process.hrtime.bigint()) / 1e6 };

/** For logs and records shown to people: wall-clock time as ISO 8601, never used to decide. */
export function wallTimeIso(): string {
  return new Date().toISOString();
}

/**
 * An RPC deadline as gRPC wants it (wall-clock epoch ms). Only bounds how long a call may wait;
 * no lease decision reads it.
 */
export function rpcDeadline(timeoutMs: number): number {
  return Date.now() + timeoutMs;
}
