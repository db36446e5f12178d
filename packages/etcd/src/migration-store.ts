import { BatonError, currentRevision, isClosedPhase, isStale, parseMigrationRecord, type MigrationRecord, type Token } from '@baton/core';
import type { EtcdConnection } from './connection.js';

/** A record as stored, with the revision a later save must compare against. */
export interface StoredMigration {
  record: MigrationRecord;
  revision: string;
}

/**
 * Migration records in etcd, one key each (`migrations/<id>`), written only by compare-on-revision
 * so two leaders can never both advance one record; and one key per VM in flight
 * (`migrating/<vm uuid>`), so a second migration of the same VM is refused (MIGRATION_CONFLICT)
 * by etcd itself, whichever replica took the request.
 */
export class MigrationStore {
  constructor(private readonly conn: EtcdConnection) {}

  private key(id: string): string {
    return this.conn.keys.migration(id);
  }

  private vmKey(uuid: string): string {
    return this.conn.keys.migrating(uuid);
  }

  async create(record: MigrationRecord): Promise<StoredMigration> {
    const key = Buffer.from(this.key(record.id));
    const vm = Buffer.from(this.vmKey(record.vm.uuid));
    const res = await this.conn.txn(
      {
        compare: [
          { key, target: 'Version', result: 'Equal', version: 0 },
          { key: vm, target: 'Version', result: 'Equal', version: 0 },
        ],
        success: [
          { request_put: { key, value: Buffer.from(JSON.stringify(record)) } },
          { request_put: { key: vm, value: Buffer.from(record.id) } },
        ],
        failure: [{ request_range: { key: vm } }],
      },
      'a new migration record',
    );
    if (!res.succeeded) {
      const other = res.responses[0]?.response_range.kvs[0]?.value.toString();
      throw new BatonError('MIGRATION_CONFLICT', `VM ${record.vm.name} already has a migration in flight${other ? ` (${other})` : ''}`, {
        details: { vm: record.vm.uuid, migration: other ?? record.id },
      });
    }
    return { record, revision: String(res.header.revision) };
  }

  /** Save the next state of a record; refused if anyone else wrote it since (a deposed leader). */
  async save(prev: StoredMigration, next: MigrationRecord): Promise<StoredMigration> {
    const key = Buffer.from(this.key(next.id));
    const closing = isClosedPhase(next.phase) && !isClosedPhase(prev.record.phase);
    const res = await this.conn.txn(
      {
        compare: [{ key, target: 'Mod', result: 'Equal', mod_revision: prev.revision }],
        success: [
          { request_put: { key, value: Buffer.from(JSON.stringify(next)) } },
          // The VM is free to migrate again once its record is closed.
          ...(closing ? [{ request_delete_range: { key: Buffer.from(this.vmKey(next.vm.uuid)) } }] : []),
        ],
      },
      `saving migration ${next.id}`,
    );
    if (!res.succeeded) throw new BatonError('NOT_LEADER', `migration ${next.id} was written by someone else; this replica no longer drives it`, { details: { migration: next.id } });
    return { record: next, revision: String(res.header.revision) };
  }

  async get(id: string): Promise<StoredMigration | undefined> {
    const kv = (await this.conn.range(this.key(id))).kvs[0];
    return kv && { record: parseMigrationRecord(JSON.parse(kv.value.toString())), revision: String(kv.mod_revision) };
  }

  /**
   * Refuse (STALE_TOKEN) a command whose token is older than the record's newest revision: the
   * coordinator saves each etcd step before it sends the next command (resume aside, which checks
   * the leases themselves), so a late or duplicated command of an earlier step, of a deposed
   * leader, or of an ended migration is refused here before it acts.
   */
  async assertCurrent(id: string, token: Token): Promise<MigrationRecord> {
    const stored = await this.get(id);
    if (!stored) throw new BatonError('STALE_TOKEN', `migration ${id} is unknown here`, { details: { migration: id, presented: token } });
    // An ended migration waits for nothing: whatever arrives for it now is a late duplicate.
    if (isClosedPhase(stored.record.phase)) throw new BatonError('STALE_TOKEN', `migration ${id} has ended (${stored.record.phase})`, { details: { migration: id, presented: token } });
    const current = currentRevision(stored.record);
    if (isStale(token, current)) throw new BatonError('STALE_TOKEN', `migration ${id}: token ${token} is older than ${current}`, { details: { migration: id, presented: token, current } });
    return stored.record;
  }

  /** The id of the VM's open migration, if it has one. */
  async openFor(vm: string): Promise<string | undefined> {
    return (await this.conn.range(this.vmKey(vm))).kvs[0]?.value.toString();
  }

  async list(): Promise<StoredMigration[]> {
    const res = await this.conn.range(this.conn.keys.migrations, { prefix: true });
    return res.kvs.map((kv) => ({ record: parseMigrationRecord(JSON.parse(kv.value.toString())), revision: String(kv.mod_revision) }));
  }
}
