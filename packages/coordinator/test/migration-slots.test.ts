import { describe, expect, it } from 'vitest';
import { MigrationLimitsSchema, MigrationSlots } from '../src/saga/migration-slots.js';

/** Which of `ids` have been admitted, after the microtasks their admission queued. */
async function admitted(pending: Map<string, Promise<void>>): Promise<string[]> {
  const done: string[] = [];
  for (const [id, p] of pending) void p.then(() => done.push(id), () => undefined);
  await new Promise<void>((resolve) => setImmediate(resolve));
  return done.sort();
}

describe('migration slots', () => {
  it('defaults to 2 migrations per host and 5 in the cluster, and refuses limits that are not positive or not known', () => {
    expect(MigrationLimitsSchema.parse({})).toEqual({ perHost: 2, inCluster: 5 });
    expect(MigrationLimitsSchema.safeParse({ perHost: 0 }).success).toBe(false);
    expect(MigrationLimitsSchema.safeParse({ perHsot: 3 }).success).toBe(false);
  });

  it('admits what fits, in order, holds the rest, and lets one between idle hosts past one waiting for a busy host', async () => {
    const slots = new MigrationSlots({ perHost: 1, inCluster: 3 });
    const signal = new AbortController().signal;
    const pending = new Map([
      ['a-b', slots.acquire('a-b', { source: 'a', destination: 'b' }, signal)],
      ['b-c', slots.acquire('b-c', { source: 'b', destination: 'c' }, signal)],
      ['a-c', slots.acquire('a-c', { source: 'a', destination: 'c' }, signal)],
      ['d-e', slots.acquire('d-e', { source: 'd', destination: 'e' }, signal)],
    ]);
    expect(await admitted(pending)).toEqual(['a-b', 'd-e']);
    expect(slots.queued).toBe(2);
    expect(slots.busy({ source: 'c', destination: 'b' })).toBe('b takes part in 1 migrations (limit 1)');
    // b is free again: b-c came before a-c, and a is still busy anyway.
    slots.release('a-b');
    expect(await admitted(pending)).toEqual(['a-b', 'b-c', 'd-e']);
    slots.release('a-b'); // idempotent: frees nothing twice
    expect(slots.queued).toBe(1);
    slots.release('b-c');
    expect(await admitted(pending)).toEqual(['a-b', 'a-c', 'b-c', 'd-e']);
    expect(slots.queued).toBe(0);
  });

  it('caps the cluster, counts a migration already under way past the limits, and drops a waiter whose signal aborts', async () => {
    const slots = new MigrationSlots({ perHost: 2, inCluster: 2 });
    slots.hold('resumed-1', { source: 'a', destination: 'b' });
    slots.hold('resumed-2', { source: 'a', destination: 'c' });
    slots.hold('resumed-3', { source: 'd', destination: 'e' });
    expect(slots.busy({ source: 'f', destination: 'g' })).toBe('3 migrations run in the cluster (limit 2)');
    const leader = new AbortController();
    const lost = slots.acquire('f-g', { source: 'f', destination: 'g' }, leader.signal);
    const kept = slots.acquire('g-h', { source: 'g', destination: 'h' }, new AbortController().signal);
    expect(slots.queued).toBe(2);
    leader.abort(new Error('leadership lost'));
    await expect(lost).rejects.toThrow('leadership lost');
    expect(slots.queued).toBe(1);
    slots.release('resumed-1');
    expect(await admitted(new Map([['g-h', kept]]))).toEqual([]);
    slots.release('resumed-2');
    expect(await admitted(new Map([['g-h', kept]]))).toEqual(['g-h']);
    await expect(slots.acquire('x', { source: 'x', destination: 'y' }, AbortSignal.abort(new Error('gone')))).rejects.toThrow('gone');
  });
});
