import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBatonError, newMigration, transition } from '@baton/core';
import { MigrationStore } from '@baton/coordinator';
import { EtcdConfigSchema, EtcdConnection } from '@baton/etcd';
import { EtcdServer } from '../support/index.js';

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
    await using conn = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: etcd.endpoints, cluster: `s${process.pid}` }));
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
});
