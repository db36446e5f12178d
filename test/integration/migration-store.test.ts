import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBatonError, newMigration, nextStep, transition, type MigrationStep } from '@baton/core';
import { EtcdSteps } from '@baton/coordinator';
import { ClusterView, LeaseTable, MigrationStore } from '@baton/etcd';
import { connectEtcd, EtcdServer, openSession, TcpProxy, waitFor } from '../support/index.js';

/** Migration records in etcd: one migration per VM at a time, saved only by compare-on-revision. */
let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});

describe('migration store', () => {
  it('refuses a second migration of a VM in flight, refuses a save by a stale writer, and frees the VM when the record closes', async () => {
    await using conn = connectEtcd(etcd.endpoints);
    const store = new MigrationStore(conn);
    const vm = { uuid: randomUUID(), name: 'web-1' };
    const request = (id: string) => ({ id, vm, source: 'host-a', destination: 'host-b', resources: [{ name: '/d/web-1.img', lockspace: 'images', mode: 'exclusive' as const }] });
    const first = await store.create(newMigration(request('m-1'), 0));
    expect(await store.create(newMigration(request('m-2'), 1)).catch(asBatonError)).toMatchObject({ code: 'MIGRATION_CONFLICT', details: { migration: 'm-1' } });

    // A deposed leader's save (it read the record before the new leader wrote) is refused.
    const failed = transition(first.record, { step: 'begin', ok: false, error: { code: 'MIGRATION_CONFLICT', message: 'not held' } }, 2);
    const saved = await store.save(first, failed);
    expect(await store.save(first, failed).catch(asBatonError)).toMatchObject({ code: 'NOT_LEADER' });
    expect((await store.get('m-1'))!.record.phase).toBe('aborted');
    expect(saved.record.phase).toBe('aborted');

    // Closed: the VM may migrate again.
    await store.create(newMigration(request('m-3'), 3));
    expect((await store.list()).map((m) => m.record.id).sort()).toEqual(['m-1', 'm-3']);
  });

  it('creates a record only while the creating leader’s key exists: a replica that lost leadership meanwhile creates nothing (NOT_LEADER)', async () => {
    await using conn = connectEtcd(etcd.endpoints);
    const store = new MigrationStore(conn);
    const vm = { uuid: randomUUID(), name: 'db-2' };
    const leaderKey = `${conn.keys.prefix}test-leader/${randomUUID()}`;
    const record = (id: string) => newMigration({ id, vm, source: 'host-a', destination: 'host-b', resources: [{ name: '/d/db-2.img', lockspace: 'images', mode: 'exclusive' }] }, 0);
    expect(await store.create(record('m-gone'), { leaderKey }).catch(asBatonError)).toMatchObject({ code: 'NOT_LEADER' });
    expect(await store.get('m-gone')).toBeUndefined();
    await conn.put(leaderKey, 'candidate');
    expect((await store.create(record('m-led'), { leaderKey })).record.id).toBe('m-led');
    // The VM's migration in flight still wins over a leader's second request.
    expect(await store.create(record('m-again'), { leaderKey }).catch(asBatonError)).toMatchObject({ code: 'MIGRATION_CONFLICT', details: { migration: 'm-led' } });
  });

  it('lets an agent refuse a command older than the record, of an ended migration, or of an unknown one (STALE_TOKEN), and one newer than the record (INVALID_REQUEST)', async () => {
    await using conn = connectEtcd(etcd.endpoints);
    const store = new MigrationStore(conn);
    const vm = { uuid: randomUUID(), name: 'db-1' };
    const key = (step: MigrationStep, token: number) => ({ migration: 'm-s', step, token });
    const created = await store.create(newMigration({ id: 'm-s', vm, source: 'host-a', destination: 'host-b', resources: [{ name: '/d/db-1.img', lockspace: 'images', mode: 'exclusive' }] }, 0));
    const begun = await store.save(created, transition(created.record, { step: 'begin', ok: true, revision: 40, grants: [30] }, 1));
    await expect(store.assertCurrent(key('prepare', 40))).resolves.toMatchObject({ phase: 'preparing' });
    expect(await store.assertCurrent(key('prepare', 39)).catch(asBatonError)).toMatchObject({ code: 'STALE_TOKEN', details: { presented: 39, current: 40 } });
    // A revision the migration never wrote: no coordinator sent it (the helper found a forged
    // discard with such a token destroying the incoming copy mid-send).
    expect(await store.assertCurrent(key('prepare', 41)).catch(asBatonError)).toMatchObject({ code: 'INVALID_REQUEST', details: { presented: 41, current: 40 } });
    expect(await store.assertCurrent({ migration: 'm-unknown', step: 'prepare', token: 99 }).catch(asBatonError)).toMatchObject({ code: 'STALE_TOKEN' });
    const failed = transition(begun.record, { step: 'prepare', ok: false, error: { code: 'IO_ERROR', message: 'no room' } }, 2);
    const unmarked = transition(failed, { step: 'unmark', ok: true, revision: 50 }, 3);
    const discarded = transition(unmarked, { step: 'discard', ok: true }, 4);
    await store.save(begun, transition(discarded, { step: 'restore', ok: true }, 5));
    expect(await store.assertCurrent(key('restore', 50)).catch(asBatonError)).toMatchObject({ code: 'STALE_TOKEN', message: expect.stringContaining('ended') });
  });

  it('lets a resume, sent while its record is saved, carry a token up to the revision that wrote the record (the commit’s), and no further', async () => {
    await using conn = connectEtcd(etcd.endpoints);
    const store = new MigrationStore(conn);
    const vm = { uuid: randomUUID(), name: 'db-3' };
    let record = newMigration({ id: 'm-r', vm, source: 'host-a', destination: 'host-b', resources: [{ name: '/d/db-3.img', lockspace: 'images', mode: 'exclusive' }] }, 0);
    const created = await store.create(record);
    record = transition(record, { step: 'begin', ok: true, revision: 2, grants: [1] }, 1);
    record = transition(record, { step: 'prepare', ok: true, incoming: 'unix:/run/in.sock' }, 2);
    record = transition(record, { step: 'mark', ok: true, revision: 3 }, 3);
    record = transition(record, { step: 'perform', ok: true }, 4);
    // As the commit leaves it: the record in `sent`, written by the transaction whose revision is the commit's token.
    const sent = await store.save(created, record);
    const commit = Number(sent.revision);
    const resume = (token: number) => ({ migration: 'm-r', step: 'resume' as const, token });
    await expect(store.assertCurrent(resume(commit))).resolves.toMatchObject({ phase: 'sent' });
    expect(await store.assertCurrent(resume(commit + 1)).catch(asBatonError)).toMatchObject({ code: 'INVALID_REQUEST', details: { presented: commit + 1 } });
    // Any other step must carry the record's newest token exactly.
    expect(await store.assertCurrent({ migration: 'm-r', step: 'discard', token: commit }).catch(asBatonError)).toMatchObject({ code: 'INVALID_REQUEST', details: { current: 3 } });
    expect(nextStep(transition(record, { step: 'commit', ok: true, revision: commit }, 5))!.key).toEqual(resume(commit));
  });
});

describe('saving a record through etcd hiccups', () => {
  /** A store whose etcd is reached through a proxy the test can fault, and one that sees etcd directly. */
  async function storesBehindProxy() {
    const direct = connectEtcd(etcd.endpoints);
    const proxy = await TcpProxy.start({ target: { port: Number(new URL(etcd.clientUrl).port) } });
    const proxied = connectEtcd([`http://${proxy.hostPort}`], 3, direct.config.cluster);
    const vm = { uuid: randomUUID(), name: 'app-1' };
    const id = `m-${vm.uuid.slice(0, 8)}`;
    const observer = new MigrationStore(direct);
    const created = await observer.create(newMigration({ id, vm, source: 'host-a', destination: 'host-b', resources: [{ name: `/d/${vm.uuid}.img`, lockspace: 'images', mode: 'exclusive' }] }, 0));
    const begun = transition(created.record, { step: 'begin', ok: true, revision: Number(created.revision) + 1, grants: [7] }, 1);
    const store = new MigrationStore(proxied);
    // Connected before any fault: the save, not the handshake, is what goes unanswered.
    expect((await store.get(id))!.record).toEqual(created.record);
    const unanswered: string[] = [];
    const retry = { signal: AbortSignal.timeout(30_000), retryMs: 20, maxRetryMs: 100, onUnanswered: (err: { code: string }) => void unanswered.push(err.code) };
    return {
      store, observer, proxy, created, begun, unanswered, retry,
      async [Symbol.asyncDispose]() {
        await proxied.close();
        await proxy.close();
        await direct.close();
      },
    };
  }

  it('recognises its own save whose answer was lost, while the read-backs go unanswered too, instead of taking it for another writer', async () => {
    await using s = await storesBehindProxy();
    // Requests reach etcd; answers are held back: the save lands, nobody hears so.
    s.proxy.toClient.pause();
    const saving = s.store.saveThrough(s.created, s.begun, s.retry);
    await waitFor(async () => (await s.observer.get(s.begun.id))?.record.phase === 'preparing' && s.unanswered.length >= 2, { what: 'the save landed, and a read-back went unanswered', deadlineMs: 20_000 });
    s.proxy.toClient.heal();
    const saved = await saving;
    const stored = await s.observer.get(s.begun.id);
    expect(saved).toEqual(stored);
    expect(stored!.record).toEqual(s.begun);
    expect(new Set(s.unanswered)).toEqual(new Set(['UNAVAILABLE']));
  });

  it('still refuses (NOT_LEADER) when another writer saved while its own save went unanswered, and leaves that writer’s record', async () => {
    await using s = await storesBehindProxy();
    // Requests are held back: the save has not reached etcd when another replica writes.
    s.proxy.toTarget.pause();
    const saving = s.store.saveThrough(s.created, s.begun, s.retry).catch(asBatonError);
    const theirs = transition(s.created.record, { step: 'begin', ok: false, error: { code: 'MIGRATION_CONFLICT', message: 'not held' } }, 2);
    await waitFor(() => s.unanswered.length >= 1, { what: 'the save went unanswered', deadlineMs: 20_000 });
    await s.observer.save(s.created, theirs);
    s.proxy.toTarget.heal();
    expect(await saving).toMatchObject({ code: 'NOT_LEADER' });
    expect((await s.observer.get(s.begun.id))!.record).toEqual(theirs);
  });
});

describe('etcd steps of the saga', () => {
  it('moves a VM’s leases through begin, mark and commit with the tokens the record keeps, and back by give-back', async () => {
    await using conn = connectEtcd(etcd.endpoints, 10);
    const [a, b] = [await openSession(conn, 'host-a'), await openSession(conn, 'host-b')];
    const vm = { uuid: randomUUID(), name: 'db-1' };
    await new LeaseTable(conn, 'host-a').grant(a, [{ lockspace: 'images', identity: '/d/db-1.img', mode: 'exclusive', owner: vm }]);
    const steps = new EtcdSteps(conn);
    const store = new MigrationStore(conn);
    let saved = await store.create(newMigration({ id: 'm-x', vm, source: 'host-a', destination: 'host-b', resources: [{ name: '/d/db-1.img', lockspace: 'images', mode: 'exclusive' }] }, 0));
    let record = saved.record;
    // Agent steps answered as an agent that succeeds would, after the record that asks for them is
    // saved; the etcd steps save theirs themselves, in their own transaction.
    const run = async (until: string) => {
      for (let cmd = nextStep(record); cmd && record.phase !== until; cmd = nextStep(record)) {
        let reply;
        if (cmd.target === 'etcd') {
          const done = await steps.run(cmd, { record, saved });
          saved = done.saved ?? saved;
          reply = done.reply;
        } else {
          if (record !== saved.record) saved = await store.save(saved, record);
          reply = { ok: true as const };
        }
        record = transition(record, { ...reply, step: cmd.step }, 1);
      }
    };
    await run('committed');
    const leases = await new ClusterView(conn).leases();
    expect(leases).toMatchObject([{ host: 'host-b', token: record.tokens.commit }]);
    // The record that asked for the commit was saved by the commit transaction itself.
    const { commit, ...tokensBefore } = record.tokens;
    expect(await store.get('m-x')).toEqual({ record: { ...record, phase: 'sent', tokens: tokensBefore, timeline: record.timeline.slice(0, -1) }, revision: String(commit) });
    // A deposed leader (its last save is older than the record) is refused, and moves nothing.
    const deposed = transition(record, { step: 'resume', ok: false, error: { code: 'RESOURCE_BUSY', message: 'cannot lock' } }, 2);
    const stale = { record: deposed, saved: { ...saved, revision: String(record.tokens.prepare) } };
    expect(await steps.run(nextStep(deposed)!, stale).catch(asBatonError)).toMatchObject({ code: 'NOT_LEADER' });
    expect(await new ClusterView(conn).leases()).toMatchObject([{ host: 'host-b', token: record.tokens.commit }]);
    record = transition(record, { step: 'resume', ok: false, error: { code: 'RESOURCE_BUSY', message: 'cannot lock' } }, 2);
    await run('aborted');
    expect(await new ClusterView(conn).leases()).toMatchObject([{ host: 'host-a', token: record.tokens.revert }]);
    expect(record.timeline.map((e) => e.phase)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'returning', 'restoring', 'aborted']);
    await a.close({ revoke: true });
    await b.close({ revoke: true });
  });
});
