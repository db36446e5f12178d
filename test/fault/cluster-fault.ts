import { asBatonError, type ClusterLease, type LockInfo } from '@baton/core';
import type { AgentProcess, JsonEvent } from '../support/index.js';

/**
 * Fixtures of the cluster fault tests (F4–F6). Every host gets its own lock directory, so only etcd
 * stands between hosts: whatever keeps two of them off one disk is the cluster's doing.
 */

/** The error codes of the catalogue an acquire may answer with while etcd misbehaves. */
export const ACQUIRE_CODES = ['RESOURCE_BUSY', 'UNAVAILABLE', 'LEASE_LOST'] as const;

/** The code a request failed with ('granted' when it did not). */
export async function outcome<T>(p: Promise<T>): Promise<{ code: string; value?: T; message?: string; details?: unknown }> {
  try {
    return { code: 'granted', value: await p };
  } catch (err) {
    const e = asBatonError(err);
    return { code: e.code, message: e.message, details: e.details };
  }
}

/** One lease as `host owner resource token`, for comparing the agents' tables with etcd. */
export const leaseKey = (host: string, owner: string, resource: string, token: number): string => `${host} ${owner} ${resource} ${token}`;

export function fromCluster(leases: readonly ClusterLease[]): string[] {
  return leases.map((l) => leaseKey(l.host, l.owner.uuid, l.resource, l.token)).sort();
}

export function fromAgent(host: string, locks: readonly LockInfo[]): string[] {
  return locks.map((l) => leaseKey(host, l.owner.uuid, l.resource, l.token));
}

/** Agent log lines whose message starts with `prefix`. */
export function logLines(agent: AgentProcess, match: (msg: string, e: JsonEvent) => boolean): JsonEvent[] {
  return agent.json.events().filter((e) => typeof e.msg === 'string' && match(e.msg, e));
}

/** Percentile of a list of numbers (nearest rank). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/**
 * `p`, or `fallback` if `p` has not settled within `ms`: a request that never gets an answer is a
 * finding to report, not a reason for the whole test to hang.
 */
export async function bounded<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<F>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
