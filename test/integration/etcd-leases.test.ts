import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BatonError, leaseTiming, systemClock } from '@baton/core';
import { ClusterView, EtcdConfigSchema, EtcdConnection, HostSession, LeaseTable, type HeldLease, type LeaseClaim, type SessionPhase } from '@baton/etcd';
import { connectEtcd, EtcdServer, makeTempDir, openSession, outcomeCode, quietLog, removeDir, TcpProxy, waitFor } from '../support/index.js';

/** The etcd adapter against a real etcd: sessions, fenced grants, batching, release. */
let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});



const connect = (ttlSeconds = 3): EtcdConnection => connectEtcd(etcd.endpoints, ttlSeconds);
const session = openSession;
const code = outcomeCode;

const claim = (identity: string, owner: string, mode: 'exclusive' | 'shared' = 'exclusive'): LeaseClaim => ({
  lockspace: 'disks',
  identity,
  mode,
  owner: { uuid: owner, name: owner },
});


describe('etcd lease table', () => {
  it('grants exclusive leases once cluster-wide, with tokens that increase per resource', async () => {
    await using conn = connect();
    const a = await session(conn, 'host-a');
    const b = await session(conn, 'host-b');
    const table = new LeaseTable(conn, 'host-a');
    const tableB = new LeaseTable(conn, 'host-b');
    const [first] = await table.grant(a, [claim('/d/1', 'vm1')]);
    expect(await code(tableB.grant(b, [claim('/d/1', 'vm2')]))).toBe('RESOURCE_BUSY');
    expect(await code(tableB.grant(b, [claim('/d/1', 'vm2', 'shared')]))).toBe('RESOURCE_BUSY');
    await table.release([first!]);
    const [second] = await tableB.grant(b, [claim('/d/1', 'vm2')]);
    expect(second!.token).toBeGreaterThan(first!.token);
    await a.close({ revoke: true });
    await b.close({ revoke: true });
  });

  it('shares shared leases among hosts and keeps exclusive out while any is held', async () => {
    await using conn = connect();
    const a = await session(conn, 'host-a');
    const b = await session(conn, 'host-b');
    const ta = new LeaseTable(conn, 'host-a');
    const tb = new LeaseTable(conn, 'host-b');
    const [sa] = await ta.grant(a, [claim('/iso', 'vm1', 'shared')]);
    const [sb] = await tb.grant(b, [claim('/iso', 'vm2', 'shared')]);
    expect(sb!.token).toBeGreaterThan(sa!.token);
    expect(await code(tb.grant(b, [claim('/iso', 'vm3')]))).toBe('RESOURCE_BUSY');
    await ta.release([sa!]);
    expect(await code(tb.grant(b, [claim('/iso', 'vm3')]))).toBe('RESOURCE_BUSY');
    await tb.release([sb!]);
    expect(await code(tb.grant(b, [claim('/iso', 'vm3')]))).toBe('granted');
    await a.close({ revoke: true });
    await b.close({ revoke: true });
  });

  it('is all or none for a multi-resource request, and batches concurrent requests into few transactions', async () => {
    await using conn = connect();
    const a = await session(conn, 'host-a');
    const table = new LeaseTable(conn, 'host-a');
    await table.grant(a, [claim('/m/2', 'other')]);
    expect(await code(table.grant(a, [claim('/m/1', 'vm'), claim('/m/2', 'vm')]))).toBe('RESOURCE_BUSY');
    expect((await new ClusterView(conn).leases()).map((l) => l.resource)).toEqual(['/m/2']);

    const before = { ...table.stats };
    // 64 requests at once, one of them conflicting: it alone is refused.
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => code(table.grant(a, [claim(i === 7 ? '/m/2' : `/b/${i}`, `vm${i}`)]))));
    expect(results.filter((r) => r === 'granted')).toHaveLength(63);
    expect(results[7]).toBe('RESOURCE_BUSY');
    const txns = table.stats.txns - before.txns;
    expect(txns).toBeLessThan(10);
    await a.close({ revoke: true });
  });

  it('deletes every lease of a session when it is revoked, and a host view reports the session', async () => {
    await using conn = connect();
    const a = await session(conn, 'host-a');
    const table = new LeaseTable(conn, 'host-a');
    await table.grant(a, [claim('/r/1', 'vm')]);
    const view = new ClusterView(conn);
    const hosts = await view.hosts();
    expect(hosts.map((h) => h.host)).toEqual(['host-a']);
    expect(hosts[0]!.ttlLeftSeconds).toBeGreaterThan(0);
    await a.close({ revoke: true });
    expect(await view.leases()).toEqual([]);
    expect(await view.hosts()).toEqual([]);
  });

  it('adopts a session a previous process held, with its leases, and expires on its own clock when keepalives stop', async () => {
    await using conn = connect(2);
    const first = await session(conn, 'host-a');
    const table = new LeaseTable(conn, 'host-a');
    const [held] = await table.grant(first, [claim('/a/1', 'vm')]);
    await first.close(); // stops renewing without revoking, as a killed process would
    const phases: SessionPhase[] = [];
    let offset = 0;
    const clock = { now: () => systemClock.now() + offset };
    const adopted = await session(conn, 'host-a', { adopt: first.id, phases, clock });
    expect(adopted.adopted).toBe(true);
    expect(adopted.id).toBe(first.id);
    expect((await table.leasesOf(adopted.id)).map((l) => l.token)).toEqual([held!.token]);
    // The monotonic clock jumps past the fence deadline: the session is lost at once, whatever etcd says.
    offset = leaseTiming(2).fenceMs + 1;
    expect(await code(table.grant(adopted, [claim('/a/2', 'vm')]))).toBe('LEASE_LOST');
    expect(phases).toContain('expired');
    await adopted.close({ revoke: true });
  });

  it('looks at its deadline at every keepalive attempt, not only when its timer fires: at risk, then expired, at the next retry once its clock is past them', async () => {
    await using proxy = await TcpProxy.start({ target: { port: Number(new URL(etcd.endpoints[0]!).port) } });
    await using conn = connectEtcd([`http://${proxy.hostPort}`], 15);
    const timing = leaseTiming(15); // keepalive every 5 s, warn at 7.5 s, fence at 11.25 s
    let offset = 0;
    const clock = { now: () => systemClock.now() + offset };
    const phases: SessionPhase[] = [];
    const s = await session(conn, 'host-a', { clock, phases });
    const openedAt = systemClock.now();
    proxy.cut();
    // The first interval's keepalive fails, and retries follow every 250 ms.
    await waitFor(() => systemClock.now() - openedAt > timing.keepaliveMs + 300, { what: 'the first keepalive to fail', deadlineMs: timing.keepaliveMs + 5_000, intervalMs: 50 });
    expect(phases).toEqual([]);
    // Its clock passes the warning while the timer still waits ~2.5 s of real time: the next retry sees it.
    offset = timing.warnMs - timing.keepaliveMs + 100;
    const jumped = systemClock.now();
    await waitFor(() => phases.includes('at-risk'), { what: 'at risk at the next retry', deadlineMs: 1_500, intervalMs: 10 });
    expect(systemClock.now() - jumped).toBeLessThan(1_500);
    offset = timing.fenceMs;
    await waitFor(() => phases.includes('expired'), { what: 'expired at the next retry', deadlineMs: 1_500, intervalMs: 10 });
    expect(phases).toEqual(['at-risk', 'expired']);
    proxy.heal();
    await s.close({ revoke: true }).catch(() => undefined);
  }, 30_000);

  it('takes a session over across exec with its deadline, and one whose deadline passed during the exec is lost at once', async () => {
    await using conn = connect(2);
    const timing = leaseTiming(2);
    const first = await session(conn, 'host-a');
    const table = new LeaseTable(conn, 'host-a');
    const [held] = await table.grant(first, [claim('/r/1', 'vm')]);
    const validUntil = first.validUntil;
    await first.close(); // the old image's timers stop at exec; the lease lives on in etcd
    const resume = (until: number, phases: SessionPhase[]): HostSession => {
      const resumed = HostSession.resume({ conn, clock: systemClock, timing, log: quietLog, onPhase: (p) => phases.push(p), id: first.id, validUntil: until });
      // Nothing happens before start(): the holder is still wiring its expiry handling.
      expect(phases).toEqual([]);
      resumed.start();
      return resumed;
    };

    // In time: the new image renews at once and grants on the same session.
    const phases: SessionPhase[] = [];
    const taken = resume(validUntil, phases);
    await waitFor(() => taken.validUntil > validUntil, { what: 'the resumed session renewed', deadlineMs: 2_000, intervalMs: 5 });
    expect(await code(table.grant(taken, [claim('/r/2', 'vm')]))).toBe('granted');
    expect(phases).toEqual([]);
    await taken.close();

    // An exec that outlasted the deadline: expired before anything is granted, whatever etcd says.
    const late: SessionPhase[] = [];
    const lost = resume(systemClock.now() - 1, late);
    expect(late).toEqual(['expired']);
    expect(await code(table.grant(lost, [claim('/r/3', 'vm')]))).toBe('LEASE_LOST');
    expect((await table.leasesOf(first.id)).map((l) => l.token)).toContain(held!.token);
    await lost.close({ revoke: true });
  });

  it('sweeps a lease whose release failed, and sweeps again after a sweep that failed too', async () => {
    await using proxy = await TcpProxy.start({ target: { port: Number(new URL(etcd.endpoints[0]!).port) } });
    await using conn = connectEtcd([`http://${proxy.hostPort}`], 3);
    const s = await session(conn, 'host-a');
    const table = new LeaseTable(conn, 'host-a');
    const held = await table.grant(s, [claim('/o/1', 'vm'), claim('/o/2', 'vm')]);
    const nothingHeld = (): ReadonlySet<string> => new Set();
    proxy.cut();
    await expect(table.release(held)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    table.orphansPossible = true; // what ClusterMember.release does when the delete fails
    // etcd is still out of reach: the sweep fails, and must not forget that it has work left.
    await expect(table.sweepOrphans(s, nothingHeld)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(table.orphansPossible).toBe(true);
    proxy.heal();
    const swept = await waitFor(async () => (table.orphansPossible ? await table.sweepOrphans(s, nothingHeld).catch(() => false) : false), { what: 'a sweep through the healed link', deadlineMs: 10_000, intervalMs: 50 });
    expect(swept).toBe(2);
    expect(table.orphansPossible).toBe(false);
    expect(await table.leasesOf(s.id)).toEqual([]);
    await s.close({ revoke: true });
  });

  it('re-grants an owner’s leases on a new session with new tokens, once: the same attempt again finds its own leases, another is refused', async () => {
    await using conn = connect(3);
    const table = new LeaseTable(conn, 'host-a');
    const lost = await session(conn, 'host-a');
    const [held] = await table.grant(lost, [claim('/g/1', 'vm')]);
    const next = await session(conn, 'host-a', { supersedes: lost.id });
    const items = [{ claim: claim('/g/1', 'vm'), previous: held! }];
    const nonce = table.nextNonce();
    const [moved] = await table.regrant(next, items, nonce);
    expect(moved!.token).toBeGreaterThan(held!.token);
    // Its answer lost, the same attempt is sent again: it finds what it wrote, and writes nothing.
    expect(await table.regrant(next, items, nonce)).toEqual([moved]);
    expect((await table.leasesOf(next.id)).map((l) => l.token)).toEqual([moved!.token]);
    // Any other attempt finds the lease no longer the old grant: refused, nothing changes.
    expect(await code(table.regrant(next, items))).toBe('RESOURCE_BUSY');
    expect((await table.leasesOf(next.id)).map((l) => l.token)).toEqual([moved!.token]);
    await lost.close({ revoke: true });
    await next.close({ revoke: true });
  });

  it('keeps a resource whose holder vanished uncleanly for the lock-delay, and one released cleanly for nobody', async () => {
    await using conn = connect(2);
    const clock = systemClock;
    const delay = { ms: 1500, clock };
    const a = await session(conn, 'host-a');
    const b = await session(conn, 'host-b');
    const ta = new LeaseTable(conn, 'host-a', delay);
    const tb = new LeaseTable(conn, 'host-b', delay);
    const [clean] = await ta.grant(a, [claim('/ld/clean', 'vm1')]);
    await ta.release([clean!]);
    expect(await code(tb.grant(b, [claim('/ld/clean', 'vm2')]))).toBe('granted');

    await ta.grant(a, [claim('/ld/dirty', 'vm1')]);
    await a.close(); // stops renewing: etcd expires the session, the lease goes, the marker stays
    const expiredAt = await waitFor(
      async () => {
        const err = await tb.grant(b, [claim('/ld/dirty', 'vm2')]).then(() => undefined, (e: unknown) => e as BatonError);
        return err?.details?.lockDelayLeftMs !== undefined ? clock.now() : false;
      },
      { what: 'the lease to expire and lock-delay to start', deadlineMs: 10_000, intervalMs: 50 },
    );
    const granted = await waitFor(async () => (await code(tb.grant(b, [claim('/ld/dirty', 'vm2')]))) === 'granted' && clock.now(), {
      what: 'the lock-delay to pass',
      deadlineMs: 5_000,
      intervalMs: 50,
    });
    expect(granted - expiredAt).toBeGreaterThanOrEqual(delay.ms - 100);
    await b.close({ revoke: true });
  });

  it('clears a marker whose lock-delay was served at the next claim when the first clearing failed', async () => {
    /** etcd answers everything but the first clearing of a marker, as if the link dropped then. */
    class ClearingFailsOnce extends EtcdConnection {
      failed = false;
      override txn(...args: Parameters<EtcdConnection['txn']>): ReturnType<EtcdConnection['txn']> {
        if (this.failed || !args[1].startsWith('clearing')) return super.txn(...args);
        this.failed = true;
        return Promise.reject(new BatonError('UNAVAILABLE', `${args[1]}: the link dropped`));
      }
    }
    await using conn = connect(2);
    await using flaky = new ClearingFailsOnce(conn.config);
    let now = 0;
    const delay = { ms: 60_000, clock: { now: () => now } };
    const a = await session(conn, 'host-a');
    const b = await session(flaky, 'host-b');
    const ta = new LeaseTable(conn, 'host-a', delay);
    const tb = new LeaseTable(flaky, 'host-b', delay);
    await ta.grant(a, [claim('/ld/flaky', 'vm1')]);
    await a.close(); // expires in etcd: the marker stays
    const grantB = (): Promise<HeldLease[]> => tb.grant(b, [claim('/ld/flaky', 'vm2')]);
    const left = await waitFor(async () => (await grantB().then(() => 'granted', (e: BatonError) => e.details?.lockDelayLeftMs)) ?? false, {
      what: 'the lease to expire and the lock-delay to start',
      deadlineMs: 10_000,
      intervalMs: 50,
    });
    expect(left).toBe(delay.ms);
    now += delay.ms; // served
    expect(await code(grantB())).toBe('UNAVAILABLE');
    expect(flaky.failed).toBe(true);
    // The delay was served and stays served: no second lock-delay for a failed delete.
    const [held] = await grantB();
    expect(held!.token).toBeGreaterThan(0);
    await b.close({ revoke: true });
  });

  it('refuses a password file that group or others can read, naming the field', async () => {
    const dir = await makeTempDir('pw');
    const file = join(dir, 'password');
    writeFileSync(file, 'secret\n', { mode: 0o644 });
    chmodSync(file, 0o644);
    const config = EtcdConfigSchema.parse({ endpoints: etcd.endpoints, auth: { username: 'u', passwordFile: file } });
    expect(() => new EtcdConnection(config)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', details: expect.objectContaining({ field: 'etcd.auth.passwordFile' }) }));
    await removeDir(dir);
  });
});
