import { BatonError, LeaseValueSchema, wallTimeIso, type LeaseValue, type MigrationRecord, type Token } from '@baton/core';
import type { ICompare, IKeyValue, IRequestOp } from 'etcd3';
import { z } from 'zod';
import type { EtcdConnection } from './connection.js';
import { KeyLayout, prefixEnd } from './keys.js';
import { parseValue } from './values.js';

/**
 * The etcd side of a live migration's handoff (DESIGN §6, S6): each step one compare-on-revision
 * transaction over all of the VM's exclusive leases. A `handoff` marker beside each lease key, on
 * no session, blocks every third party (an exclusive acquire needs the resource's whole prefix
 * empty) from `begin` until `commit` moves the lease to the destination or `unmark` gives up, so
 * the resource is never free in between, even if the source's session expires meanwhile.
 *
 * Every step may be re-issued (a coordinator that crashed, a lost reply): it recognises its own
 * earlier success by the values it wrote (migration id and step) and returns that revision.
 */
export const HandoffMarkerSchema = z.object({ v: z.literal(1), migration: z.string(), step: z.enum(['begin', 'mark']), source: z.string(), destination: z.string() });
export type HandoffMarker = z.infer<typeof HandoffMarkerSchema>;

export interface HandoffResource {
  lockspace: string;
  identity: string;
}

export interface HandoffParty {
  host: string;
  /** The host's session (its host record's lease): the moved leases hang on it. */
  session: string;
}

const buf = (s: string): Buffer => Buffer.from(s);

/** A resource of the handoff with its keys, computed once. */
interface Target {
  resource: HandoffResource;
  prefix: string;
  excl: string;
  marker: string;
}

export class Handoff {
  private readonly targets: Target[];

  constructor(
    private readonly conn: EtcdConnection,
    readonly migration: string,
    resources: readonly HandoffResource[],
    private readonly source: string,
    private readonly destination: string,
  ) {
    this.targets = resources.map((resource) => {
      const prefix = conn.keys.resource(resource.lockspace, resource.identity);
      return { resource, prefix, excl: KeyLayout.exclusive(prefix), marker: KeyLayout.handoffMarker(prefix) };
    });
  }

  /** The handoff of a migration record's exclusive leases. */
  static of(conn: EtcdConnection, record: MigrationRecord): Handoff {
    return new Handoff(conn, record.id, record.resources.map((r) => ({ lockspace: r.lockspace, identity: r.name })), record.source, record.destination);
  }

  /** What a step reads: per resource, its exclusive lease and its marker; and etcd's revision then. */
  private async read(): Promise<{ state: { excl: IKeyValue | undefined; marker: IKeyValue | undefined }[]; revision: Token }> {
    // One read of each resource's prefix sees both keys at one revision.
    const replies = await Promise.all(this.targets.map((t) => this.conn.range(t.prefix, { prefix: true })));
    return {
      state: replies.map((res, i) => ({
        excl: res.kvs.find((kv) => kv.key.toString() === this.targets[i]!.excl),
        marker: res.kvs.find((kv) => kv.key.toString() === this.targets[i]!.marker),
      })),
      revision: Math.max(...replies.map((res) => Number(res.header.revision))),
    };
  }

  /** Each resource's exclusive lease as etcd has it now, with its token: what an agent checks before it runs the VM. */
  async holders(): Promise<{ resource: HandoffResource; lease: LeaseValue | undefined; token: Token | undefined }[]> {
    const { state } = await this.read();
    return state.map((s, i) => ({ resource: this.targets[i]!.resource, lease: parseValue(LeaseValueSchema, s.excl), token: s.excl && Number(s.excl.mod_revision) }));
  }

  private marker(step: HandoffMarker['step']): string {
    return JSON.stringify({ v: 1, migration: this.migration, step, source: this.source, destination: this.destination } satisfies HandoffMarker);
  }

  /** Ours already at `step`? Then the revision that wrote it (a re-issued step). */
  private ownMarkerRevision(state: { marker: IKeyValue | undefined }[], step: HandoffMarker['step']): Token | undefined {
    const markers = state.map((s) => parseValue(HandoffMarkerSchema, s.marker));
    if (markers.every((m) => m?.migration === this.migration && m.step === step)) return Number(state[0]!.marker!.mod_revision);
    return undefined;
  }

  private async txn(compare: ICompare[], success: IRequestOp[], what: string): Promise<Token> {
    const res = await this.conn.txn({ compare, success }, what);
    if (!res.succeeded) throw new BatonError('MIGRATION_CONFLICT', `${what} of migration ${this.migration}: the leases changed under it`, { details: { migration: this.migration } });
    return Number(res.header.revision);
  }

  /** Reserve the leases for this migration: each still the source's, with no other handoff. */
  async begin(vm: string): Promise<{ token: Token; grants: Token[] }> {
    const { state } = await this.read();
    const again = this.ownMarkerRevision(state, 'begin');
    if (again !== undefined) return { token: again, grants: state.map((s) => Number(s.excl!.mod_revision)) };
    state.forEach((s, i) => {
      const { identity } = this.targets[i]!.resource;
      const lease = parseValue(LeaseValueSchema, s.excl);
      if (!lease || lease.host !== this.source || lease.owner.uuid !== vm) {
        throw new BatonError('MIGRATION_CONFLICT', `"${identity}" is not leased by ${vm} on ${this.source}`, { details: { resource: identity, holder: lease?.host ?? null } });
      }
      if (s.marker) throw new BatonError('MIGRATION_CONFLICT', `"${identity}" is in another handoff`, { details: { resource: identity } });
    });
    const token = await this.txn(
      this.targets.flatMap((t, i) => [
        { key: buf(t.excl), target: 'Mod', result: 'Equal', mod_revision: state[i]!.excl!.mod_revision },
        { key: buf(t.marker), target: 'Version', result: 'Equal', version: 0 },
      ]),
      this.targets.map((t) => ({ request_put: { key: buf(t.marker), value: buf(this.marker('begin')) } })),
      'begin',
    );
    return { token, grants: state.map((s) => Number(s.excl!.mod_revision)) };
  }

  /** The destination is ready (prepare answered): mark the handoff, still owned by the source. */
  async mark(begin: Token): Promise<Token> {
    const again = this.ownMarkerRevision((await this.read()).state, 'mark');
    if (again !== undefined) return again;
    return this.txn(
      this.targets.map((t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: begin })),
      this.targets.map((t) => ({ request_put: { key: buf(t.marker), value: buf(this.marker('mark')) } })),
      'mark',
    );
  }

  /**
   * Put every lease on `to`'s session in one transaction, with a new token (the revision), under
   * `compare`; a re-issue finds its own values and returns their revision. The key is overwritten,
   * never absent.
   */
  private async moveLeases(step: 'commit' | 'give-back', compare: (t: Target, excl: IKeyValue | undefined) => ICompare, owner: LeaseValue['owner'], to: HandoffParty, extra: (t: Target) => IRequestOp[]): Promise<Token> {
    const { state } = await this.read();
    const grant = `${this.migration}:${step}`;
    if (state.every((s) => parseValue(LeaseValueSchema, s.excl)?.grant === grant)) return Number(state[0]!.excl!.mod_revision);
    const value = (t: Target): string =>
      JSON.stringify({ v: 1, host: to.host, owner, lockspace: t.resource.lockspace, resource: t.resource.identity, mode: 'exclusive', since: wallTimeIso(), grant } satisfies LeaseValue);
    return this.txn(
      this.targets.map((t, i) => compare(t, state[i]!.excl)),
      this.targets.flatMap((t) => [{ request_put: { key: buf(t.excl), value: buf(value(t)), lease: to.session } }, ...extra(t)]),
      step,
    );
  }

  /** The send succeeded: the leases move to the destination and the markers go, in one transaction. */
  commit(prepare: Token, owner: LeaseValue['owner'], to: HandoffParty): Promise<Token> {
    return this.moveLeases('commit', (t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: prepare }), owner, to, (t) => [{ request_delete_range: { key: buf(t.marker) } }]);
  }

  /** Give up before commit: the markers go, the source never stopped holding. */
  async unmark(current: Token): Promise<Token> {
    const { state, revision } = await this.read();
    // Already done by an earlier issue of this step: the markers' deletion is at most `revision`.
    if (state.every((s) => s.marker === undefined)) return revision;
    return this.txn(
      this.targets.map((t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: current })),
      this.targets.map((t) => ({ request_delete_range: { key: buf(t.marker) } })),
      'unmark',
    );
  }

  /**
   * After commit, the destination could not run the VM: the leases go back to the source, with a
   * new token. A lease that vanished with the destination's session (its agent stayed down past
   * the TTL) is taken back too, if nothing at all is held under the resource (no third party, no
   * lock-delay marker): neither copy has run since commit.
   */
  giveBack(commit: Token, owner: LeaseValue['owner'], to: HandoffParty): Promise<Token> {
    return this.moveLeases(
      'give-back',
      (t, excl) => (excl === undefined ? { key: buf(t.prefix), range_end: prefixEnd(t.prefix), target: 'Version', result: 'Equal', version: 0 } : { key: buf(t.excl), target: 'Mod', result: 'Equal', mod_revision: commit }),
      owner,
      to,
      () => [],
    );
  }
}
