import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatonError } from '@baton/core';
import { ClusterView, Handoff, LeaseTable, type LeaseClaim } from '@baton/etcd';
import { connectEtcd, EtcdServer, openSession, outcomeCode, waitFor } from '../support/index.js';

/** The etcd side of a migration's handoff: never free, never doubled, every step re-issuable. */
let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});


const session = openSession;
const code = outcomeCode;

const VM = { uuid: 'vm-1', name: 'vm-1' };
const claim = (identity: string, owner = VM, mode: 'exclusive' | 'shared' = 'exclusive'): LeaseClaim => ({ lockspace: 'disks', identity, mode, owner });


describe('handoff transactions', () => {
  it('keeps a third party out from begin to commit, even when the source session expires, and moves the leases with a new token', async () => {
    await using conn = connectEtcd(etcd.endpoints, 2);
    const [src, dst, third] = await Promise.all([session(conn, 'src'), session(conn, 'dst'), session(conn, 'third')]);
    const disks = ['/h/1', '/h/2'];
    const [g1] = await new LeaseTable(conn, 'src').grant(src, disks.map((d) => claim(d)));
    const thirdTable = new LeaseTable(conn, 'third');
    const tryThird = async (): Promise<string[]> => Promise.all(disks.flatMap((d) => [code(thirdTable.grant(third, [claim(d, { uuid: 'x', name: 'x' })])), code(thirdTable.grant(third, [claim(d, { uuid: 'y', name: 'y' }, 'shared')]))]));

    const handoff = new Handoff(conn, 'm-1', disks.map((identity) => ({ lockspace: 'disks', identity })), 'src', 'dst');
    expect(await code(new Handoff(conn, 'm-0', [{ lockspace: 'disks', identity: '/h/1' }], 'src', 'dst').begin('other-vm'))).toBe('MIGRATION_CONFLICT');
    const begun = await handoff.begin(VM.uuid);
    expect(begun.grants).toEqual([g1!.token, g1!.token]);
    expect((await handoff.begin(VM.uuid)).token).toBe(begun.token);
    expect(await code(new Handoff(conn, 'm-2', [{ lockspace: 'disks', identity: '/h/1' }], 'src', 'dst').begin(VM.uuid))).toBe('MIGRATION_CONFLICT');
    expect(await tryThird()).toEqual(Array(4).fill('RESOURCE_BUSY'));

    const marked = await handoff.mark(begun.token);
    expect(marked).toBeGreaterThan(begun.token);
    expect(await handoff.mark(begun.token)).toBe(marked);

    // The source's session expires mid-handoff: its leases vanish, the markers keep the disks taken.
    await src.close();
    await waitFor(async () => (await new ClusterView(conn).leases()).every((l) => l.host !== 'src'), { what: 'the source session to expire', deadlineMs: 10_000, intervalMs: 100 });
    expect(await tryThird()).toEqual(Array(4).fill('RESOURCE_BUSY'));

    // A session the destination no longer has (a cached one, after its agent restarted) is refused, moving nothing.
    expect(await code(handoff.commit(marked, VM, { host: 'dst', session: third.id }))).toBe('UNAVAILABLE');
    expect(await tryThird()).toEqual(Array(4).fill('RESOURCE_BUSY'));
    const committed = await handoff.commit(marked, VM, { host: 'dst', session: dst.id });
    expect(committed).toBeGreaterThan(marked);
    expect(await handoff.commit(marked, VM, { host: 'dst', session: dst.id })).toBe(committed);
    const leases = await new ClusterView(conn).leases();
    expect(leases.map((l) => [l.resource, l.host, l.token, l.session === BigInt(dst.id).toString(16)]).sort()).toEqual(disks.map((d) => [d, 'dst', committed, true]));
    expect(await tryThird()).toEqual(Array(4).fill('RESOURCE_BUSY'));
    await dst.close({ revoke: true });
    await third.close({ revoke: true });
  });

  it('gives up cleanly before commit, and gives the leases back after it with a newer token', async () => {
    await using conn = connectEtcd(etcd.endpoints, 5);
    const [src, dst] = await Promise.all([session(conn, 'src'), session(conn, 'dst')]);
    const [g] = await new LeaseTable(conn, 'src').grant(src, [claim('/g/1')]);
    const resources = [{ lockspace: 'disks', identity: '/g/1' }];

    const aborted = new Handoff(conn, 'm-a', resources, 'src', 'dst');
    const begun = await aborted.begin(VM.uuid);
    const reverted = await aborted.unmark(begun.token);
    expect(reverted).toBeGreaterThan(begun.token);
    expect(await new ClusterView(conn).leases()).toMatchObject([{ host: 'src', token: g!.token }]);

    const rolled = new Handoff(conn, 'm-b', resources, 'src', 'dst');
    const b2 = await rolled.begin(VM.uuid);
    const committed = await rolled.commit(await rolled.mark(b2.token), VM, { host: 'dst', session: dst.id });
    const back = await rolled.giveBack(committed, VM, { host: 'src', session: src.id });
    expect(back).toBeGreaterThan(committed);
    expect(await rolled.giveBack(committed, VM, { host: 'src', session: src.id })).toBe(back);
    expect(await new ClusterView(conn).leases()).toMatchObject([{ host: 'src', token: back }]);
    await src.close({ revoke: true });
    await dst.close({ revoke: true });
  });

  it('keeps a lease that vanished with the destination’s session taken (the commit’s marker) until the give-back takes it back; once settled, a vanished lease is not given back', async () => {
    await using conn = connectEtcd(etcd.endpoints, 5);
    const [src, dst] = await Promise.all([session(conn, 'src'), session(conn, 'dst')]);
    await new LeaseTable(conn, 'src').grant(src, [claim('/v/1'), claim('/v/2')]);
    const handoffOf = (id: string, identity: string) => new Handoff(conn, id, [{ lockspace: 'disks', identity }], 'src', 'dst');
    const [h1, h2] = [handoffOf('m-v1', '/v/1'), handoffOf('m-v2', '/v/2')];
    const c1 = await h1.commit(await h1.mark((await h1.begin(VM.uuid)).token), VM, { host: 'dst', session: dst.id });
    const c2 = await h2.commit(await h2.mark((await h2.begin(VM.uuid)).token), VM, { host: 'dst', session: dst.id });
    // The destination ran the VM of the second handoff (settled: its marker goes; again, a no-op), not the first's.
    const settled = await h2.settle(c2);
    expect(settled).toBeGreaterThan(c2);
    expect(await h2.settle(c2)).toBeGreaterThanOrEqual(settled);
    // The destination's host is lost: its session, and the leases on it, go.
    await dst.close({ revoke: true });
    expect(await new ClusterView(conn).leases()).toEqual([]);
    const intruder = await session(conn, 'intruder');
    const intruders = new LeaseTable(conn, 'intruder');
    const other = { uuid: 'other', name: 'other' };
    // The first is still taken by its commit marker: no third party gets it, exclusive or shared,
    // and the refusal says which migration holds it.
    for (const mode of ['exclusive', 'shared'] as const) {
      const refused = await intruders.grant(intruder, [claim('/v/1', other, mode)]).then(() => undefined, (e: unknown) => e as BatonError);
      expect(refused, mode).toMatchObject({ code: 'RESOURCE_BUSY', details: { resource: '/v/1', migration: 'm-v1' } });
      expect(refused?.message).toBe('"/v/1" is in the handoff of migration m-v1 (src → dst); it is free only once that migration has ended and released it');
    }
    // The second's handoff is over: it is free, as any lost host's lease is.
    await intruders.grant(intruder, [claim('/v/2', other)]);

    const back = await h1.giveBack(c1, VM, { host: 'src', session: src.id });
    expect(back).toBeGreaterThan(c1);
    expect(await h1.giveBack(c1, VM, { host: 'src', session: src.id })).toBe(back);
    // The VM ran on the destination since the commit: its source may not take the lease back with older memory.
    expect(await code(h2.giveBack(c2, VM, { host: 'src', session: src.id }))).toBe('MIGRATION_CONFLICT');
    expect((await new ClusterView(conn).leases()).map((l) => [l.resource, l.host, l.owner.uuid]).sort()).toEqual([
      ['/v/1', 'src', VM.uuid],
      ['/v/2', 'intruder', 'other'],
    ]);
    // Given back, the first has no marker left: a new handoff of it can begin.
    expect((await handoffOf('m-v3', '/v/1').begin(VM.uuid)).grants).toEqual([back]);
    await src.close({ revoke: true });
    await intruder.close({ revoke: true });
  });

  it('releases the leases to nobody when the source was declared fenced: a live or a vanished lease, once; a settled handoff keeps its lease against a release or a give-back', async () => {
    await using conn = connectEtcd(etcd.endpoints, 5);
    const [src, dst, other] = await Promise.all([session(conn, 'src'), session(conn, 'dst'), session(conn, 'other')]);
    await new LeaseTable(conn, 'src').grant(src, ['/r/1', '/r/2', '/r/3'].map((d) => claim(d)));
    const committed = async (id: string, identity: string) => {
      const h = new Handoff(conn, id, [{ lockspace: 'disks', identity }], 'src', 'dst');
      return { h, commit: await h.commit(await h.mark((await h.begin(VM.uuid)).token), VM, { host: 'dst', session: dst.id }) };
    };
    const others = new LeaseTable(conn, 'other');
    const take = (identity: string) => others.grant(other, [claim(identity, { uuid: 'o', name: 'o' })]);
    const [r1, r2, r3] = [await committed('m-r1', '/r/1'), await committed('m-r2', '/r/2'), await committed('m-r3', '/r/3')];

    // The destination's lease, live: deleted with its marker, and the disk is free.
    expect(await r1.h.release(r1.commit)).toBeGreaterThan(r1.commit);
    await take('/r/1');
    // A re-issue (a lost reply) finds it done, whoever holds the disk now.
    expect(await r1.h.release(r1.commit)).toBeGreaterThan(r1.commit);
    expect(await code(r1.h.giveBack(r1.commit, VM, { host: 'src', session: src.id }))).toBe('MIGRATION_CONFLICT');

    // Settled: the VM ran on the destination, whose lease neither a release nor a give-back may move.
    await r2.h.settle(r2.commit);
    expect(await code(r2.h.release(r2.commit))).toBe('MIGRATION_CONFLICT');
    expect(await code(r2.h.giveBack(r2.commit, VM, { host: 'src', session: src.id }))).toBe('MIGRATION_CONFLICT');

    // The destination's session gone too: the commit's marker is all there is, and it goes.
    await dst.close({ revoke: true });
    expect(await code(take('/r/3'))).toBe('RESOURCE_BUSY');
    await r3.h.release(r3.commit);
    await take('/r/3');
    expect((await new ClusterView(conn).leases()).map((l) => [l.resource, l.host]).sort()).toEqual([
      ['/r/1', 'other'],
      ['/r/3', 'other'],
    ]);
    await src.close({ revoke: true });
    await other.close({ revoke: true });
  });
});
