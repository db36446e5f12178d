import { z } from 'zod';

/**
 * Every cluster timeout derives from one base, the session TTL, as sanlock derives its own from
 * io_timeout: change the TTL and the rest follows, so they cannot be set inconsistently.
 *
 * All durations count from the moment the last successful keepalive was *sent* (etcd restarts
 * the lease's TTL when it receives the request, which is later), on the host's monotonic clock.
 */
export interface LeaseTiming {
  ttlMs: number;
  /** How often a keepalive is sent. Three chances before the warning. */
  keepaliveMs: number;
  /** No keepalive answered for this long: warn, the session is at risk. */
  warnMs: number;
  /** Fence: apply every owner's lease-loss policy and stop granting. */
  fenceMs: number;
  /** fenceMs + marginMs = ttlMs: the time fencing actions have before etcd could free the leases. */
  marginMs: number;
  /** SIGTERM → SIGKILL grace during fencing: half the margin, so the kill lands inside it. */
  fenceKillGraceMs: number;
  /** Deadline of one etcd request: a keepalive that takes longer is counted as failed. */
  requestTimeoutMs: number;
}

export const TtlSeconds = z.number().int().min(2).max(3600);

export function leaseTiming(ttlSeconds: number): LeaseTiming {
  const ttlMs = TtlSeconds.parse(ttlSeconds) * 1000;
  const marginMs = ttlMs / 4;
  return {
    ttlMs,
    keepaliveMs: ttlMs / 3,
    warnMs: ttlMs / 2,
    fenceMs: ttlMs - marginMs,
    marginMs,
    fenceKillGraceMs: marginMs / 2,
    requestTimeoutMs: ttlMs / 4,
  };
}
