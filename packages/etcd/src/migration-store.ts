import { setTimeout as delay } from 'node:timers/promises';
import { asBatonError, Backoff, BatonError, compareTokens, currentRevision, isClosedPhase, isSettled, isStale, OVERLAPS_SAVE, parseMigrationRecord, type IdempotencyKey, type MigrationRecord } from '@baton/core';
import type { ICompare, IKeyValue } from 'etcd3';
import type { EtcdConnection } from './connection.js';

/** A record as stored, with the revision a later save must compare against. */
export interface StoredMigration {
  record: MigrationRecord;
  revision: string;
}

/** A record as etcd stores it: the bytes a save writes, and a read-back recognises. */
export function recordValue(record: MigrationRecord): string {
  return JSON.stringify(record);
}

/** How `saveThrough` waits between attempts, and whom it tells about an unanswered one. */
export interface SaveRetry {
  signal: AbortSignal;
  /** The first pause; doubled after each unanswered attempt up to `maxRetryMs`. */
  retryMs: number;
  maxRetryMs: number;
  onUnanswered?(err: BatonError): void;
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

  /**
   * Create a record, refused (MIGRATION_CONFLICT) while the VM has another in flight. With
   * `leaderKey`, only while that leadership key exists (NOT_LEADER otherwise): a record created by
   * a replica that lost leadership meanwhile would be found by no leader (the next one lists the
   * records once, when it is elected, after this key is gone).
   */
  async create(record: MigrationRecord, opts: { leaderKey?: string } = {}): Promise<StoredMigration> {
    const key = Buffer.from(this.key(record.id));
    const vm = Buffer.from(this.vmKey(record.vm.uuid));
    const leader = opts.leaderKey === undefined ? undefined : Buffer.from(opts.leaderKey);
    const res = await this.conn.txn(
      {
        compare: [
          { key, target: 'Version', result: 'Equal', version: 0 },
          { key: vm, target: 'Version', result: 'Equal', version: 0 },
          ...(leader ? [{ key: leader, target: 'Version', result: 'Greater', version: 0 } satisfies ICompare] : []),
        ],
        success: [
          { request_put: { key, value: Buffer.from(recordValue(record)) } },
          { request_put: { key: vm, value: Buffer.from(record.id) } },
        ],
        failure: [{ request_range: { key: vm } }, ...(leader ? [{ request_range: { key: leader, count_only: true } }] : [])],
      },
      'a new migration record',
    );
    if (!res.succeeded) {
      if (leader && Number(res.responses[1]?.response_range.count ?? 0) === 0) {
        throw new BatonError('NOT_LEADER', `migration ${record.id} was not created: this replica is no longer the leader`, { details: { leader: null } });
      }
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
          { request_put: { key, value: Buffer.from(recordValue(next)) } },
          // The VM is free to migrate again once its record is closed.
          ...(closing ? [{ request_delete_range: { key: Buffer.from(this.vmKey(next.vm.uuid)) } }] : []),
        ],
      },
      `saving migration ${next.id}`,
    );
    if (!res.succeeded) throw writtenByOther(next.id);
    return { record: next, revision: String(res.header.revision) };
  }

  /**
   * `save` through etcd hiccups. An unanswered save may have landed, so it is never sent again
   * blind: a second copy would fail its compare against our own first one and look like another
   * writer's. The record is read back until etcd answers: still `prev`, the save has not landed
   * and goes again; exactly `next`, it did; anything else is another writer's (NOT_LEADER).
   */
  async saveThrough(prev: StoredMigration, next: MigrationRecord, retry: SaveRetry): Promise<StoredMigration> {
    const written = recordValue(next);
    const backoff = new Backoff(retry.retryMs, retry.maxRetryMs);
    const pause = async (err: unknown): Promise<void> => {
      retry.onUnanswered?.(asBatonError(err));
      await delay(backoff.next(), undefined, { signal: retry.signal });
    };
    let unanswered = false;
    for (;;) {
      retry.signal.throwIfAborted();
      try {
        return await this.save(prev, next);
      } catch (err) {
        // A refused compare after an unanswered attempt may be that attempt landing late: read it.
        if (asBatonError(err).code !== 'NOT_LEADER') {
          unanswered = true;
          await pause(err);
        } else if (!unanswered) throw err;
      }
      for (;;) {
        let kv;
        try {
          kv = (await this.conn.range(this.key(next.id))).kvs[0];
        } catch (err) {
          await pause(err);
          continue;
        }
        // Deleted, or other bytes than ours: another writer's.
        if (kv === undefined) throw writtenByOther(next.id);
        if (String(kv.mod_revision) === prev.revision) break;
        if (kv.value.toString() !== written) throw writtenByOther(next.id);
        return { record: next, revision: String(kv.mod_revision) };
      }
    }
  }

  /**
   * Delete a settled record as stored; one written since (compared by revision) stays. Returns
   * whether it went. The migration's history outlives it in the event stream.
   */
  async remove(stored: StoredMigration): Promise<boolean> {
    if (!isSettled(stored.record)) throw new BatonError('INTERNAL', `migration ${stored.record.id} is not settled (${stored.record.phase}); only a settled record is removed`);
    const key = Buffer.from(this.key(stored.record.id));
    const res = await this.conn.txn({ compare: [{ key, target: 'Mod', result: 'Equal', mod_revision: stored.revision }], success: [{ request_delete_range: { key } }] }, `removing migration ${stored.record.id}`);
    return res.succeeded;
  }

  async get(id: string): Promise<StoredMigration | undefined> {
    const kv = (await this.conn.range(this.key(id))).kvs[0];
    return kv && storedMigration(kv);
  }

  /** `assertCurrentIn` on the record as etcd has it now. */
  async assertCurrent(key: IdempotencyKey): Promise<MigrationRecord> {
    return assertCurrentIn(await this.get(key.migration), key);
  }

  /** The id of the VM's open migration, if it has one. */
  async openFor(vm: string): Promise<string | undefined> {
    return (await this.conn.range(this.vmKey(vm))).kvs[0]?.value.toString();
  }

  async list(): Promise<StoredMigration[]> {
    const res = await this.conn.range(this.conn.keys.migrations, { prefix: true });
    return res.kvs.map(storedMigration);
  }
}

/** A record key as read from etcd. */
export function storedMigration(kv: IKeyValue): StoredMigration {
  return { record: parseMigrationRecord(JSON.parse(kv.value.toString())), revision: String(kv.mod_revision) };
}

/**
 * Refuse a command whose token is not the one the record in etcd asks for: older (STALE_TOKEN) is
 * a late or duplicated command of an earlier step, of a deposed leader, or of an ended migration;
 * newer than anything the migration wrote (INVALID_REQUEST) is no command of its coordinator's.
 * The coordinator saves the record that asks for a step before it sends the step, so the token is
 * the record's newest (`currentRevision`), but for the steps it sends while that save is under way
 * (OVERLAPS_SAVE: resume), whose token the record's own revision covers, since the transaction that
 * wrote the token (the commit) wrote the record too.
 */
export function assertCurrentIn(stored: StoredMigration | undefined, { migration: id, step, token }: IdempotencyKey): MigrationRecord {
  if (!stored) throw new BatonError('STALE_TOKEN', `migration ${id} is unknown here`, { details: { migration: id, presented: token } });
  // An ended migration waits for nothing: whatever arrives for it now is a late duplicate.
  if (isClosedPhase(stored.record.phase)) throw new BatonError('STALE_TOKEN', `migration ${id} has ended (${stored.record.phase})`, { details: { migration: id, presented: token } });
  const current = currentRevision(stored.record);
  if (isStale(token, current)) throw new BatonError('STALE_TOKEN', `migration ${id}: token ${token} is older than ${current}`, { details: { migration: id, presented: token, current } });
  const newest = OVERLAPS_SAVE.includes(step) ? Number(stored.revision) : current;
  if (compareTokens(token, newest) > 0) {
    throw new BatonError('INVALID_REQUEST', `migration ${id}: token ${token} was never written by it (${step} asks for ${current}${newest === current ? '' : ` to ${newest}`})`, {
      details: { migration: id, step, presented: token, current },
    });
  }
  return stored.record;
}

function writtenByOther(id: string): BatonError {
  return new BatonError('NOT_LEADER', `migration ${id} was written by someone else; this replica no longer drives it`, { details: { migration: id } });
}
