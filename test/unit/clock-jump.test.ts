import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { leaseTiming, systemClock, wallTimeIso, type MonotonicClock } from '@baton/core';
import { ClusterView, LeaseTable, type EtcdConnection, type HostSession, type LeaseClaim, type SessionPhase } from '@baton/etcd';
import { connectEtcd, EtcdServer, openSession, outcomeCode, TcpProxy, waitFor } from '../support/index.js';

/**
 * F7, clock jumps. Every lease decision of a host session reads the injected monotonic clock and
 * nothing else: a monotonic clock that leaps forward (a host that was frozen for an hour) ends the
 * session at once, and a wall clock set back or forward by an hour (NTP step, an operator's
 * `date -s`) changes no decision at all. Against a real etcd; the only thing faked is `Date`.
 */
const TTL = 3;
const timing = leaseTiming(TTL);
const HOUR = 3_600_000;

/** The host's monotonic clock plus a forward offset the test moves (a monotonic clock never goes back). */
class JumpingClock implements MonotonicClock {
  private offset = 0;
  now(): number {
    return systemClock.now() + this.offset;
  }
  leap(ms: number): void {
    if (ms < 0) throw new Error('a monotonic clock does not go backwards');
    this.offset += ms;
  }
}

let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});
afterEach(() => {
  vi.useRealTimers();
});



const connect = (endpoints = etcd.endpoints): EtcdConnection => connectEtcd(endpoints, TTL);
const open = (conn: EtcdConnection, clock: MonotonicClock, phases: SessionPhase[]): Promise<HostSession> => openSession(conn, 'host-a', { clock, phases });
const code = outcomeCode;

const claim = (identity: string): LeaseClaim => ({ lockspace: 'disks', identity, mode: 'exclusive', owner: { uuid: 'vm', name: 'vm' } });


/** The wall clock (Date only; timers and the monotonic clock untouched) set `shiftMs` away from the real time, still running. */
function shiftWallClock(shiftMs: number): void {
  vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true, advanceTimeDelta: 5 });
  vi.setSystemTime(vi.getRealSystemTime() + shiftMs);
  expect(Math.abs(Date.now() - (vi.getRealSystemTime() + shiftMs))).toBeLessThan(1_000);
  // The product's own wall-clock reader sees the jump too: the fake is the one it would read.
  expect(Math.abs(Date.parse(wallTimeIso()) - (vi.getRealSystemTime() + shiftMs))).toBeLessThan(1_000);
}

describe('clock jumps (F7)', () => {
  it('a +1 h leap of the monotonic clock ends the session at once: the next grant is LEASE_LOST and writes nothing', async () => {
    await using conn = connect();
    const clock = new JumpingClock();
    const phases: SessionPhase[] = [];
    const session = await open(conn, clock, phases);
    const table = new LeaseTable(conn, 'host-a');
    expect(await code(table.grant(session, [claim('/d/before')]))).toBe('granted');
    expect(session.isValid).toBe(true);

    clock.leap(HOUR);
    // No timer has run yet: the decision is made by reading the clock when the grant comes in.
    expect(session.isValid).toBe(false);
    expect(await code(table.grant(session, [claim('/d/after')]))).toBe('LEASE_LOST');
    expect(phases).toEqual(['expired']);
    // The refused grant never reached etcd; etcd itself still has the session (its TTL is its own).
    expect((await new ClusterView(conn).leases()).map((l) => l.resource)).toEqual(['/d/before']);
    expect(Number((await conn.leaseTimeToLive(session.id)).TTL)).toBeGreaterThan(0);
    // `expired` is final: keepalives answered later do not bring it back.
    expect(await code(table.grant(session, [claim('/d/later')]))).toBe('LEASE_LOST');
    await session.close({ revoke: true });
  });

  it('a +1 h leap with no grant asked expires the session on its own timer, within one keepalive period', async () => {
    await using conn = connect();
    const clock = new JumpingClock();
    const phases: SessionPhase[] = [];
    const session = await open(conn, clock, phases);
    const leapedAt = systemClock.now();
    clock.leap(HOUR);
    await waitFor(() => phases.includes('expired'), { what: 'the session to expire after the leap', deadlineMs: timing.keepaliveMs + 1_000, intervalMs: 5 });
    const tookMs = systemClock.now() - leapedAt;
    expect(tookMs).toBeLessThanOrEqual(timing.keepaliveMs + 200);
    expect(session.validUntil).toBeLessThan(clock.now() - HOUR + 1);
    await session.close({ revoke: true });
  });

  it('a wall clock set back 1 h does not stretch the session: it still expires fenceMs after the last answered keepalive was sent', async () => {
    await using proxy = await TcpProxy.start({ target: { port: etcd.clientPort } });
    await using conn = connect([`http://${proxy.hostPort}`]);
    const phases: SessionPhase[] = [];
    const session = await open(conn, systemClock, phases);
    const table = new LeaseTable(conn, 'host-a');
    // Let at least one keepalive be answered on the running session.
    const firstUntil = session.validUntil;
    await waitFor(() => session.validUntil > firstUntil, { what: 'a keepalive answered', deadlineMs: timing.keepaliveMs * 2 + 1_000, intervalMs: 10 });

    shiftWallClock(-HOUR);
    expect(await code(table.grant(session, [claim('/w/back')]))).toBe('granted');
    // Renewal goes on as before while etcd answers.
    const before = session.validUntil;
    await waitFor(() => session.validUntil > before, { what: 'a keepalive answered after the jump', deadlineMs: timing.keepaliveMs * 2 + 1_000, intervalMs: 10 });
    expect(session.validUntil - systemClock.now()).toBeLessThanOrEqual(timing.fenceMs);

    // Now etcd stops answering. A Date-based deadline would be an hour away; the real one is not.
    const cutAt = systemClock.now();
    const lastSent = session.validUntil - timing.fenceMs;
    proxy.blackhole();
    await waitFor(() => phases.includes('expired'), { what: 'the session to expire on the monotonic clock', deadlineMs: timing.fenceMs + 2_000, intervalMs: 5 });
    const expiredAt = systemClock.now();
    expect(lastSent).toBeLessThanOrEqual(cutAt);
    expect(expiredAt).toBeGreaterThanOrEqual(lastSent + timing.fenceMs);
    expect(expiredAt - (lastSent + timing.fenceMs)).toBeLessThan(250);
    expect(expiredAt - cutAt).toBeLessThanOrEqual(timing.fenceMs + 250);
    expect(await code(table.grant(session, [claim('/w/late')]))).toBe('LEASE_LOST');
    await session.close();
  });

  it('a wall clock set forward 1 h does not shorten the session: it stays valid and grants while keepalives are answered', async () => {
    await using conn = connect();
    const phases: SessionPhase[] = [];
    const session = await open(conn, systemClock, phases);
    const table = new LeaseTable(conn, 'host-a');
    shiftWallClock(+HOUR);
    const jumpedAt = systemClock.now();
    let grants = 0;
    const wrong: string[] = [];
    // Watch the session for longer than a whole TTL: a Date-based deadline would have passed an hour ago.
    await waitFor(
      async () => {
        if (!session.isValid) wrong.push(`invalid at +${Math.round(systemClock.now() - jumpedAt)} ms (${phases.join(', ')})`);
        const result = await code(table.grant(session, [claim(`/f/${grants}`)]));
        if (result === 'granted') grants++;
        else wrong.push(`grant ${grants}: ${result}`);
        return systemClock.now() - jumpedAt > timing.ttlMs + timing.keepaliveMs;
      },
      { what: 'a TTL and more of valid session after the jump', deadlineMs: timing.ttlMs * 3, intervalMs: 100 },
    );
    expect(wrong).toEqual([]);
    expect(phases).toEqual([]);
    expect(session.validUntil - systemClock.now()).toBeGreaterThan(0);
    expect(session.validUntil - systemClock.now()).toBeLessThanOrEqual(timing.fenceMs);
    expect(grants).toBeGreaterThan(10);
    await session.close({ revoke: true });
  });
});
