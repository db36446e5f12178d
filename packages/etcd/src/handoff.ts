import { BatonError, LeaseValueSchema, wallTimeIso, type LeaseValue, type MigrationRecord, type Token } from '@baton/core';
import type { ICompare, IKeyValue, IRangeResponse, IRequestOp, ITxnResponse } from 'etcd3';
import { z } from 'zod';
import type { EtcdConnection } from './connection.js';
import { KeyLayout, prefixEnd } from './keys.js';
import { recordValue, storedMigration, type StoredMigration } from './migration-store.js';
import { parseValue } from './values.js';

/**
 * The etcd side of a live migration's handoff (DESIGN §6, S6): each step one compare-on-revision
 * transaction over all of the VM's exclusive leases. A `handoff` marker beside each lease key, on
 * no session, blocks every third party (an exclusive acquire needs the resource's whole prefix
 * empty) from `begin` until the destination runs the VM (`settle`, after `commit` moved the lease
 * to it) or the leases stay or go back with the source (`unmark`, `giveBack`), so the resource is
 * never free in between, even if the source's session, or after the commit the destination's,
 * ends meanwhile.
 *
 * Every step may be re-issued (a coordinator that crashed, a lost reply): it recognises its own
 * earlier success by the values it wrote (migration id and step) and returns that revision.
 *
 * A step may carry the migration record (a `RecordGuard`): the transaction then also compares the
 * record's revision, so a deposed leader's step is refused (NOT_LEADER), and may put the record's
 * next state, so the save that asks for the step costs no write of its own. Steps other than
 * `begin` and `give-back` are optimistic: the transaction goes first, and only a refused one reads
 * (in its failure branch, the same round trip) whether it was a re-issue of its own, another
 * writer, or changed leases.
 */
export const HandoffMarkerSchema = z.object({ v: z.literal(1), migration: z.string(), step: z.enum(['begin', 'mark', 'commit']), source: z.string(), destination: z.string() });
export type HandoffMarker = z.infer<typeof HandoffMarkerSchema>;

export interface HandoffResource {
  lockspace: string;
  identity: string;
}

/** A resource's exclusive lease as etcd has it, with its token. */
export interface Holder {
  resource: HandoffResource;
  lease: LeaseValue | undefined;
  token: Token | undefined;
}

/**
 * LEASE_LOST naming the first resource whose exclusive lease is not the VM's on `host`, if any:
 * a copy there may not run. After a commit only a give-back moves the leases, or the end of the
 * host's session (expired past its TTL, or revoked by an operator's fence declaration), which
 * deletes them.
 */
export function leaseLost(holders: readonly Holder[], record: MigrationRecord, host: string): BatonError | undefined {
  const foreign = holders.find((h) => h.lease?.host !== host || h.lease.owner.uuid !== record.vm.uuid);
  if (foreign === undefined) return undefined;
  return new BatonError('LEASE_LOST', `"${foreign.resource.identity}" is not leased to ${record.vm.name} on ${host}`, { details: { resource: foreign.resource.identity, holder: foreign.lease?.host ?? null } });
}

export interface HandoffParty {
  host: string;
  /** The host's session (its host record's lease): the moved leases hang on it. */
  session: string;
}

/** The migration record in a step's transaction: compared on `revision`; `write` is put if given. */
export interface RecordGuard {
  revision: string;
  write?: MigrationRecord;
}

const buf = (s: string): Buffer => Buffer.from(s);

/** Per resource, its exclusive lease and its marker, as one read (or a refused transaction) saw them. */
type Seen = { excl: IKeyValue | undefined; marker: IKeyValue | undefined }[];

/** One step's transaction, before the record guard and the failure reads are added. */
interface Attempt {
  step: string;
  compare: ICompare[];
  success: IRequestOp[];
  /** The revision of this step's own earlier success, if what was seen is it. */
  recognise(seen: Seen, revision: Token): Token | undefined;
  /** The session moved leases go on: compared live on its host's record. */
  to?: HandoffParty;
}

/** A resource of the handoff with its keys, computed once. */
interface Target {
  resource: HandoffResource;
  prefix: string;
  excl: string;
  marker: string;
}

export class Handoff {
  private readonly targets: Target[];
  private readonly recordKey: Buffer;

  constructor(
    private readonly conn: EtcdConnection,
    readonly migration: string,
    resources: readonly HandoffResource[],
    private readonly source: string,
    private readonly destination: string,
  ) {
    this.recordKey = buf(conn.keys.migration(migration));
    this.targets = resources.map((resource) => {
      const prefix = conn.keys.resource(resource.lockspace, resource.identity);
      return { resource, prefix, excl: KeyLayout.exclusive(prefix), marker: KeyLayout.handoffMarker(prefix) };
    });
  }

  /** The handoff of a migration record's exclusive leases. */
  static of(conn: EtcdConnection, record: MigrationRecord): Handoff {
    return new Handoff(conn, record.id, record.resources.map((r) => ({ lockspace: r.lockspace, identity: r.name })), record.source, record.destination);
  }

  /** Each resource's exclusive lease and marker, from one range of its prefix (both keys at one revision). */
  private seen(replies: IRangeResponse[]): Seen {
    return replies.map((res, i) => ({
      excl: res.kvs.find((kv) => kv.key.toString() === this.targets[i]!.excl),
      marker: res.kvs.find((kv) => kv.key.toString() === this.targets[i]!.marker),
    }));
  }

  /** What a step reads first (begin, give-back): every resource's prefix, in one round trip. */
  private async read(): Promise<Seen> {
    return this.stateRead(await this.conn.txn({ success: this.stateReads() }, 'the leases of a handoff')).seen;
  }

  /**
   * What an agent checks before it runs the VM, in one round trip (it sits on the handoff's
   * critical path): each resource's exclusive lease as etcd has it now, with its token, and the
   * migration record.
   */
  async holders(): Promise<{ holders: Holder[]; record: StoredMigration | undefined }> {
    const res = await this.conn.txn({ success: this.stateReads() }, 'the leases and record of a handoff');
    const { seen, record } = this.stateRead(res);
    return {
      holders: seen.map((s, i) => ({ resource: this.targets[i]!.resource, lease: parseValue(LeaseValueSchema, s.excl), token: s.excl && Number(s.excl.mod_revision) })),
      record: record && storedMigration(record),
    };
  }

  /** A transaction's reads of every resource's prefix and of the record, in that order (then any more). */
  private stateReads(): IRequestOp[] {
    return [...this.targets.map((t) => ({ request_range: { key: buf(t.prefix), range_end: prefixEnd(t.prefix) } })), { request_range: { key: this.recordKey } }];
  }

  /** What `stateReads` read; `more`, the replies to the reads after them. */
  private stateRead(res: ITxnResponse): { seen: Seen; record: IKeyValue | undefined; more: IRangeResponse[] } {
    const reads = res.responses.map((r) => r.response_range);
    const n = this.targets.length;
    return { seen: this.seen(reads.slice(0, n)), record: reads[n]!.kvs[0], more: reads.slice(n + 1) };
  }

  private marker(step: HandoffMarker['step']): string {
    return JSON.stringify({ v: 1, migration: this.migration, step, source: this.source, destination: this.destination } satisfies HandoffMarker);
  }

  /** Ours already at `step`? Then the revision that wrote it (a re-issued step). */
  private ownMarkerRevision(state: Seen, step: HandoffMarker['step']): Token | undefined {
    const markers = state.map((s) => parseValue(HandoffMarkerSchema, s.marker));
    if (markers.every((m) => m?.migration === this.migration && m.step === step)) return Number(state[0]!.marker!.mod_revision);
    return undefined;
  }

  /**
   * One step's transaction with the record guard. Refused, its failure branch reads the leases,
   * the record and the receiving host's record in the same round trip, to tell why: a re-issue of
   * a step that already landed (its revision, the record's too if it carried one), another writer
   * of the record (NOT_LEADER), a host whose session changed (UNAVAILABLE: read it again and
   * retry), or leases that changed under the handoff (MIGRATION_CONFLICT).
   */
  private async attempt(a: Attempt, guard?: RecordGuard): Promise<Token> {
    const { recordKey } = this;
    const value = guard?.write && recordValue(guard.write);
    const to = a.to && { ...a.to, key: buf(this.conn.keys.host(a.to.host)) };
    const res = await this.conn.txn(
      {
        compare: [
          ...a.compare,
          ...(guard ? [{ key: recordKey, target: 'Mod', result: 'Equal', mod_revision: guard.revision } satisfies ICompare] : []),
          ...(to ? [{ key: to.key, target: 'Lease', result: 'Equal', lease: to.session } satisfies ICompare] : []),
        ],
        success: value === undefined ? a.success : [...a.success, { request_put: { key: recordKey, value: buf(value) } }],
        failure: [...this.stateReads(), ...(to ? [{ request_range: { key: to.key } }] : [])],
      },
      a.step,
    );
    if (res.succeeded) return Number(res.header.revision);
    const { seen, record, more } = this.stateRead(res);
    const again = a.recognise(seen, Number(res.header.revision));
    if (again !== undefined) {
      if (value === undefined) return again;
      // It landed with the record it carried, in one transaction: the record's revision is the step's.
      if (record?.value.toString() === value) return Number(record.mod_revision);
    }
    if (guard && String(record?.mod_revision) !== guard.revision) {
      throw new BatonError('NOT_LEADER', `${a.step} of migration ${this.migration}: the record was written by someone else; this replica no longer drives it`, { details: { migration: this.migration } });
    }
    if (to && String(more[0]!.kvs[0]?.lease ?? '') !== to.session) {
      throw new BatonError('UNAVAILABLE', `${a.step} of migration ${this.migration}: host ${to.host} is no longer on session ${to.session}`, { details: { host: to.host } });
    }
    throw new BatonError('MIGRATION_CONFLICT', `${a.step} of migration ${this.migration}: the leases changed under it`, { details: { migration: this.migration } });
  }

  /** Reserve the leases for this migration: each still the source's, with no other handoff. */
  async begin(vm: string, guard?: RecordGuard): Promise<{ token: Token; grants: Token[] }> {
    const state = await this.read();
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
    const token = await this.attempt(
      {
        step: 'begin',
        compare: this.targets.flatMap((t, i) => [
          { key: buf(t.excl), target: 'Mod', result: 'Equal', mod_revision: state[i]!.excl!.mod_revision },
          { key: buf(t.marker), target: 'Version', result: 'Equal', version: 0 },
        ]),
        success: this.targets.map((t) => ({ request_put: { key: buf(t.marker), value: buf(this.marker('begin')) } })),
        recognise: (seen) => this.ownMarkerRevision(seen, 'begin'),
      },
      guard,
    );
    return { token, grants: state.map((s) => Number(s.excl!.mod_revision)) };
  }

  /** The destination is ready (prepare answered): mark the handoff, still owned by the source. */
  mark(begin: Token, guard?: RecordGuard): Promise<Token> {
    return this.attempt(
      {
        step: 'mark',
        compare: this.targets.map((t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: begin })),
        success: this.targets.map((t) => ({ request_put: { key: buf(t.marker), value: buf(this.marker('mark')) } })),
        recognise: (seen) => this.ownMarkerRevision(seen, 'mark'),
      },
      guard,
    );
  }

  /**
   * Put every lease on `to`'s session in one transaction, with a new token (the revision), under
   * `compare`; a re-issue finds its own values and returns their revision. The key is overwritten,
   * never absent.
   */
  private moveLeases(step: 'commit' | 'give-back', compare: ICompare[], owner: LeaseValue['owner'], to: HandoffParty, extra: (t: Target) => IRequestOp[], guard?: RecordGuard): Promise<Token> {
    const grant = `${this.migration}:${step}`;
    const value = (t: Target): string =>
      JSON.stringify({ v: 1, host: to.host, owner, lockspace: t.resource.lockspace, resource: t.resource.identity, mode: 'exclusive', since: wallTimeIso(), grant } satisfies LeaseValue);
    return this.attempt(
      {
        step,
        compare,
        success: this.targets.flatMap((t) => [{ request_put: { key: buf(t.excl), value: buf(value(t)), lease: to.session } }, ...extra(t)]),
        recognise: (seen) => (seen.every((s) => parseValue(LeaseValueSchema, s.excl)?.grant === grant) ? Number(seen[0]!.excl!.mod_revision) : undefined),
        to,
      },
      guard,
    );
  }

  /**
   * The send succeeded: the leases move to the destination, in one transaction, and the markers
   * stay, at step `commit`, until the destination has run the VM (`settle`) or the leases go back
   * (`giveBack`). The leases now hang on the destination's session; should that session end before
   * the VM runs there (the host lost), the markers, on no session, still keep every third party
   * out, and the give-back can always take the leases back.
   */
  commit(prepare: Token, owner: LeaseValue['owner'], to: HandoffParty, guard?: RecordGuard): Promise<Token> {
    return this.moveLeases(
      'commit',
      this.targets.map((t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: prepare })),
      owner,
      to,
      (t) => [{ request_put: { key: buf(t.marker), value: buf(this.marker('commit')) } }],
      guard,
    );
  }

  /**
   * The destination runs the VM: the commit's markers go (compared on the commit's revision, which
   * wrote them). Idempotent: markers already gone are the step done. After it, the handoff is over
   * in etcd, and a give-back of a vanished lease is refused (the VM ran on the destination since).
   */
  settle(commit: Token): Promise<Token> {
    return this.attempt({
      step: 'settle',
      compare: this.targets.map((t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: commit })),
      success: this.targets.map((t) => ({ request_delete_range: { key: buf(t.marker) } })),
      recognise: (seen, revision) => (seen.every((s) => s.marker === undefined) ? revision : undefined),
    });
  }

  /** Nothing under the resource but its handoff marker: no lease of either mode, no unclean-loss marker. */
  private onlyMarker(t: Target): ICompare[] {
    return [
      { key: buf(t.prefix), range_end: buf(t.marker), target: 'Version', result: 'Equal', version: 0 },
      { key: buf(`${t.marker}\0`), range_end: prefixEnd(t.prefix), target: 'Version', result: 'Equal', version: 0 },
    ];
  }

  /** Give up before commit: the markers go, the source never stopped holding. */
  unmark(current: Token, guard?: RecordGuard): Promise<Token> {
    return this.attempt(
      {
        step: 'unmark',
        compare: this.targets.map((t) => ({ key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: current })),
        success: this.targets.map((t) => ({ request_delete_range: { key: buf(t.marker) } })),
        // Already done by an earlier issue of this step: the markers' deletion is at most `revision`.
        recognise: (seen, revision) => (seen.every((s) => s.marker === undefined) ? revision : undefined),
      },
      guard,
    );
  }

  /**
   * After commit, the destination could not run the VM: the leases go back to the source, with a
   * new token, and the commit's markers go. Refused once the handoff has settled (the VM ran on the
   * destination). A lease that vanished with the destination's session (its host down past the
   * TTL) is taken back too, if nothing else is held under the resource; the commit's marker kept
   * any third party out meanwhile.
   */
  async giveBack(commit: Token, owner: LeaseValue['owner'], to: HandoffParty, guard?: RecordGuard): Promise<Token> {
    return this.moveLeases('give-back', this.committedOnly(await this.read(), commit), owner, to, (t) => [{ request_delete_range: { key: buf(t.marker) } }], guard);
  }

  /**
   * The give-back when there is no source to give to (an operator declared its host fenced: the
   * VM's copy there went with it) and the destination could not run the VM either: the leases and
   * the commit's markers are deleted under the give-back's compares, and the disks are free for
   * the VM to be started again. A re-issue finds the markers gone and no lease left as the commit
   * wrote it (a settled handoff keeps the destination's lease: that is a refusal, not a re-issue).
   */
  async release(commit: Token, guard?: RecordGuard): Promise<Token> {
    return this.attempt(
      {
        step: 'release',
        compare: this.committedOnly(await this.read(), commit),
        success: this.targets.flatMap((t) => [{ request_delete_range: { key: buf(t.excl) } }, { request_delete_range: { key: buf(t.marker) } }]),
        recognise: (seen, revision) => (seen.every((s) => s.marker === undefined && Number(s.excl?.mod_revision) !== commit) ? revision : undefined),
      },
      guard,
    );
  }

  /**
   * What taking the leases back after commit compares: the commit's marker still standing (the
   * destination never ran the VM: `settle` had not run), and each lease as the commit wrote it
   * or, where it vanished with the destination's session, nothing else under the resource.
   */
  private committedOnly(state: Seen, commit: Token): ICompare[] {
    return this.targets.flatMap((t, i): ICompare[] => [
      { key: buf(t.marker), target: 'Mod', result: 'Equal', mod_revision: commit },
      ...(state[i]!.excl === undefined ? this.onlyMarker(t) : [{ key: buf(t.excl), target: 'Mod', result: 'Equal', mod_revision: commit } satisfies ICompare]),
    ]);
  }
}
