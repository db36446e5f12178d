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
    const known = this.sessions.get(host) ?? (await this.liveSession(host));
    // Its session has ended: a commit to it fails for good and the migration aborts; a give-back
    // (no way out but success) is retried.
    if (known === undefined) throw sessionEnded(host);
    this.sessions.set(host, known);
    return known;
  }

  /** The host's session as its host record has it now; undefined once the session has ended. */
  private async liveSession(host: string): Promise<HandoffParty | undefined> {
    const kv = (await this.conn.range(this.conn.keys.host(host))).kvs[0];
    return kv && parseValue(HostRecordSchema, kv) ? { host, session: String(kv.lease) } : undefined;
  }

  /**
   * The answer an agent step nobody answered gets from etcd, when etcd shows the step can never
   * go through: its host's session has ended (down past its TTL, or revoked by an operator's fence
   * declaration), and with it every lease on it. Undefined: it is sent again.
   *
   * - resume: the destination no longer holds every lease of the VM (`leaseLost`). Its agent, back
   *   or not, would refuse with LEASE_LOST; so it fails now, and the VM goes back to its source.
   * - prepare: the destination has no session. It fails (LEASE_LOST), so the migration aborts
   *   before the source has paused anything.
   * - discard: the destination has no session. Done: its copy never held a lease and can never
   *   run, and its agent removes it when it starts again (VmHost's removeLeftovers).
   *
   * The source's steps are answered only once an operator has declared its host fenced since the
   * migration began (`baton host fence --i-have-fenced`: powered off, its VMs gone) and it has
   * not come back since. Until then the VM's state is there (perform, restore), or its only other
   * copy is (confirm), and only that host's agent may act on it. After it, nothing is left there:
   * perform fails (LEASE_LOST: whether the state arrived is unknown, and the copy that received
   * it never ran), so the migration aborts; restore is done (the VM went with its host); confirm
   * is done (the VM runs on the destination).
   */
  async unanswered(record: MigrationRecord, command: MigrationCommand): Promise<MigrationStepReply | undefined> {
    if (command.target === 'source') {
      if (!(await this.declaredFenced(record, command.host))) return undefined;
      return command.step === 'perform' ? { ok: false, error: declaredFenced(command.host).toBody() } : { ok: true };
    }
    if (command.target !== 'destination') return undefined;
    if (command.step === 'resume') {
      const lost = leaseLost((await Handoff.of(this.conn, record).holders()).holders, record, command.host);
      return lost && { ok: false, error: lost.toBody() };
    }
    if (command.step !== 'prepare' && command.step !== 'discard') return undefined;
    if ((await this.liveSession(command.host)) !== undefined) return undefined;
    return command.step === 'discard' ? { ok: true } : { ok: false, error: sessionEnded(command.host).toBody() };
  }

  /**
   * Whether an operator declared `host` fenced after the migration began (a fence audit record
   * written since its begin transaction) and the host has no session since: its copies are gone.
   */
  async declaredFenced(record: MigrationRecord, host: string): Promise<boolean> {
    const begin = record.tokens.begin;
    if (begin === undefined) return false;
    const [session, audits] = await Promise.all([this.liveSession(host), this.conn.range(this.conn.keys.fenceAudits(host), { prefix: true })]);
    return session === undefined && audits.kvs.some((kv) => Number(kv.create_revision) > begin);
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
          // No source to give back to: the leases are released (the destination could not run the VM either).
          if (await this.declaredFenced(record, moving)) return done(await h.release(t.commit!, guard));
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

/** A source an operator declared fenced: the VM's copy there went with it. */
function declaredFenced(host: string): BatonError {
  return new BatonError('LEASE_LOST', `host ${host} was declared fenced by an operator during the migration: its copy of the VM is gone`, { details: { host } });
}

/** A host whose session has ended, and with it every lease on it. */
function sessionEnded(host: string): BatonError {
  return new BatonError('LEASE_LOST', `host ${host} has no live session: it is down past its TTL, or was declared fenced`, { details: { host } });
}
