import { asBatonError, BatonError, currentRevision, HostRecordSchema, type MigrationCommand, type MigrationRecord, type MigrationStepReply } from '@baton/core';
import { Handoff, leaseLost, parseValue, type EtcdConnection, type HandoffParty, type RecordGuard, type StoredMigration } from '@baton/etcd';

/**
 * The record that asks for a step, and the last record saved. The step's transaction compares
 * the saved one's revision (a deposed leader's step is refused) and, when the record that asks is
 * newer, puts it: the save rides on the step instead of costing a write of its own.
 */
export interface StepRecord {
  record: MigrationRecord;
  saved: StoredMigration;
}

/**
 * The migration steps the coordinator carries out itself, each one etcd transaction through the
 * handoff (begin, mark, commit, unmark, give-back). A failure is a reply, not a throw: the state
 * machine decides whether it is retried or leads to the abort path. Only another writer of the
 * record throws (NOT_LEADER): this replica no longer drives it.
 */
export class EtcdSteps {
  /**
   * Each host's session, read once: the leases a commit or give-back moves hang on it. The
   * transaction compares it with the host's record, so a session that changed since is refused,
   * never used; it is then read again.
   */
  private readonly sessions = new Map<string, HandoffParty>();

  constructor(private readonly conn: EtcdConnection) {}

  private async party(host: string): Promise<HandoffParty> {
    const known = this.sessions.get(host);
    if (known) return known;
    const kv = (await this.conn.range(this.conn.keys.host(host))).kvs[0];
    if (!kv || !parseValue(HostRecordSchema, kv)) throw new BatonError('UNAVAILABLE', `host ${host} has no live session`, { details: { host } });
    const party = { host, session: String(kv.lease) };
    this.sessions.set(host, party);
    return party;
  }

  /** LEASE_LOST if `host` does not hold every lease of the record's VM now (`leaseLost`). */
  async leaseLost(record: MigrationRecord, host: string): Promise<BatonError | undefined> {
    return leaseLost((await Handoff.of(this.conn, record).holders()).holders, record, host);
  }

  /** The reply, and the record as saved by the step's transaction when it carried one. */
  async run(command: MigrationCommand, { record, saved }: StepRecord): Promise<{ reply: MigrationStepReply; saved?: StoredMigration }> {
    const h = Handoff.of(this.conn, record);
    // The moved leases name the VM's policy: an agent restarted after a crash re-adopts the VM with it.
    const owner = { uuid: record.vm.uuid, name: record.vm.name, ...(record.onLeaseLoss === null ? {} : { onLeaseLoss: record.onLeaseLoss }) };
    const t = record.tokens;
    const writes = record !== saved.record;
    const guard: RecordGuard = writes ? { revision: saved.revision, write: record } : { revision: saved.revision };
    const done = (revision: number, grants?: number[]) => ({
      reply: grants === undefined ? { ok: true as const, revision } : { ok: true as const, revision, grants },
      ...(writes ? { saved: { record, revision: String(revision) } } : {}),
    });
    const moving = command.step === 'commit' ? record.destination : record.source;
    try {
      switch (command.step) {
        case 'begin': {
          const { token, grants } = await h.begin(record.vm.uuid, guard);
          return done(token, grants);
        }
        case 'mark':
          return done(await h.mark(t.begin!, guard));
        case 'commit':
          return done(await h.commit(t.prepare!, owner, await this.party(moving), guard));
        case 'unmark':
          return done(await h.unmark(currentRevision(record), guard));
        case 'give-back':
          return done(await h.giveBack(t.commit!, owner, await this.party(moving), guard));
        default:
          throw new BatonError('INTERNAL', `${command.step} is not an etcd step`);
      }
    } catch (err) {
      const error = asBatonError(err, 'UNAVAILABLE');
      if (error.code === 'NOT_LEADER') throw error;
      // Whatever failed, the host's session is read afresh for the next attempt.
      this.sessions.delete(moving);
      return { reply: { ok: false, error: error.toBody() } };
    }
  }
}
