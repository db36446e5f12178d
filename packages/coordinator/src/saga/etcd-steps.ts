import { asBatonError, BatonError, currentRevision, HostRecordSchema, type MigrationCommand, type MigrationRecord, type MigrationStepReply } from '@baton/core';
import { Handoff, parseValue, type EtcdConnection, type HandoffParty } from '@baton/etcd';

/**
 * The migration steps the coordinator carries out itself, each one etcd transaction through the
 * handoff (begin, mark, commit, unmark, give-back). A failure is a reply, not a throw: the state
 * machine decides whether it is retried or leads to the abort path.
 */
export class EtcdSteps {
  constructor(private readonly conn: EtcdConnection) {}

  /** A host's current session, from its host record (the leases moved to it hang on it). */
  private async party(host: string): Promise<HandoffParty> {
    const kv = (await this.conn.range(this.conn.keys.host(host))).kvs[0];
    if (!kv || !parseValue(HostRecordSchema, kv)) throw new BatonError('UNAVAILABLE', `host ${host} has no live session`, { details: { host } });
    return { host, session: String(kv.lease) };
  }

  async run(record: MigrationRecord, command: MigrationCommand): Promise<MigrationStepReply> {
    const h = Handoff.of(this.conn, record);
    const owner = { uuid: record.vm.uuid, name: record.vm.name };
    const t = record.tokens;
    try {
      switch (command.step) {
        case 'begin': {
          const { token, grants } = await h.begin(record.vm.uuid);
          return { ok: true, revision: token, grants };
        }
        case 'mark':
          return { ok: true, revision: await h.mark(t.begin!) };
        case 'commit':
          return { ok: true, revision: await h.commit(t.prepare!, owner, await this.party(record.destination)) };
        case 'unmark':
          return { ok: true, revision: await h.unmark(currentRevision(record)) };
        case 'give-back':
          return { ok: true, revision: await h.giveBack(t.commit!, owner, await this.party(record.source)) };
        default:
          throw new BatonError('INTERNAL', `${command.step} is not an etcd step`);
      }
    } catch (err) {
      return { ok: false, error: asBatonError(err, 'UNAVAILABLE').toBody() };
    }
  }
}
