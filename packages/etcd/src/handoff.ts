import { BatonError, LeaseValueSchema, wallTimeIso, type LeaseValue, type Token } from '@baton/core';
import type { ICompare, IKeyValue, IRequestOp } from 'etcd3';
import { z } from 'zod';
import type { EtcdConnection } from './connection.js';
import { KeyLayout } from './keys.js';

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

function parse<T>(schema: z.ZodType<T>, kv: IKeyValue | undefined): T | undefined {
  if (!kv) return undefined;
  try {
    const r = schema.safeParse(JSON.parse(kv.value.toString()));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

export class Handoff {
  constructor(
    private readonly conn: EtcdConnection,
    readonly migration: string,
    private readonly resources: readonly HandoffResource[],
    private readonly source: string,
    private readonly destination: string,
  ) {}

  private keys(r: HandoffResource): { excl: string; marker: string } {
    const excl = KeyLayout.exclusive(this.conn.keys.resource(r.lockspace, r.identity));
    return { excl, marker: `${excl.slice(0, -'excl'.length)}handoff` };
  }

  private async read(): Promise<{ excl: IKeyValue | undefined; marker: IKeyValue | undefined }[]> {
    return Promise.all(
      this.resources.map(async (r) => {
        const k = this.keys(r);
        const [excl, marker] = await Promise.all([this.conn.range(k.excl), this.conn.range(k.marker)]);
        return { excl: excl.kvs[0], marker: marker.kvs[0] };
      }),
    );
  }

  private marker(step: HandoffMarker['step']): string {
    return JSON.stringify({ v: 1, migration: this.migration, step, source: this.source, destination: this.destination } satisfies HandoffMarker);
  }

  /** Ours already at `step`? Then the revision that wrote it (a re-issued step). */
  private ownMarkerRevision(state: { marker: IKeyValue | undefined }[], step: HandoffMarker['step']): Token | undefined {
    const markers = state.map((s) => parse(HandoffMarkerSchema, s.marker));
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
    const state = await this.read();
    const again = this.ownMarkerRevision(state, 'begin');
    if (again !== undefined) return { token: again, grants: state.map((s) => Number(s.excl!.mod_revision)) };
    state.forEach((s, i) => {
      const lease = parse(LeaseValueSchema, s.excl);
      if (!lease || lease.host !== this.source || lease.owner.uuid !== vm) {
        throw new BatonError('MIGRATION_CONFLICT', `"${this.resources[i]!.identity}" is not leased by ${vm} on ${this.source}`, { details: { resource: this.resources[i]!.identity, holder: lease?.host ?? null } });
      }
      if (s.marker) throw new BatonError('MIGRATION_CONFLICT', `"${this.resources[i]!.identity}" is in another handoff`, { details: { resource: this.resources[i]!.identity } });
    });
    const token = await this.txn(
      state.flatMap((s, i) => [
        { key: buf(this.keys(this.resources[i]!).excl), target: 'Mod', result: 'Equal', mod_revision: s.excl!.mod_revision },
        { key: buf(this.keys(this.resources[i]!).marker), target: 'Version', result: 'Equal', version: 0 },
      ]),
      this.resources.map((r) => ({ request_put: { key: buf(this.keys(r).marker), value: buf(this.marker('begin')) } })),
      'begin',
    );
    return { token, grants: state.map((s) => Number(s.excl!.mod_revision)) };
  }

  /** The destination is ready (prepare answered): mark the handoff, still owned by the source. */
  async mark(begin: Token): Promise<Token> {
    const state = await this.read();
    const again = this.ownMarkerRevision(state, 'mark');
    if (again !== undefined) return again;
    return this.txn(
      this.resources.map((r) => ({ key: buf(this.keys(r).marker), target: 'Mod', result: 'Equal', mod_revision: begin })),
      this.resources.map((r) => ({ request_put: { key: buf(this.keys(r).marker), value: buf(this.marker('mark')) } })),
      'mark',
    );
  }

  private leaseValue(r: HandoffResource, owner: LeaseValue['owner'], host: string, step: string): string {
    return JSON.stringify({ v: 1, host, owner, lockspace: r.lockspace, resource: r.identity, mode: 'exclusive', since: wallTimeIso(), grant: `${this.migration}:${step}` } satisfies LeaseValue);
  }

  /** Ours already written by `step`? Then its revision. */
  private ownLeaseRevision(state: { excl: IKeyValue | undefined }[], step: string): Token | undefined {
    const leases = state.map((s) => parse(LeaseValueSchema, s.excl));
    if (leases.every((l) => l?.grant === `${this.migration}:${step}`)) return Number(state[0]!.excl!.mod_revision);
    return undefined;
  }

  /**
   * The send succeeded: one transaction moves every lease to the destination's session with a new
   * token (the revision) and removes the markers. The key is never absent: it is overwritten.
   */
  async commit(prepare: Token, owner: LeaseValue['owner'], to: HandoffParty): Promise<Token> {
    const state = await this.read();
    const again = this.ownLeaseRevision(state, 'commit');
    if (again !== undefined) return again;
    return this.txn(
      this.resources.map((r) => ({ key: buf(this.keys(r).marker), target: 'Mod', result: 'Equal', mod_revision: prepare })),
      this.resources.flatMap((r) => [
        { request_put: { key: buf(this.keys(r).excl), value: buf(this.leaseValue(r, owner, to.host, 'commit')), lease: to.session } },
        { request_delete_range: { key: buf(this.keys(r).marker) } },
      ]),
      'commit',
    );
  }

  /** Give up before commit: the markers go, the source never stopped holding. */
  async unmark(current: Token): Promise<Token> {
    const state = await this.read();
    if (state.every((s) => s.marker === undefined)) {
      // Already done by an earlier issue of this step: the revision is the markers' deletion, at least `current`.
      return Number((await this.conn.range(this.keys(this.resources[0]!).excl)).header.revision);
    }
    return this.txn(
      this.resources.map((r) => ({ key: buf(this.keys(r).marker), target: 'Mod', result: 'Equal', mod_revision: current })),
      this.resources.map((r) => ({ request_delete_range: { key: buf(this.keys(r).marker) } })),
      'unmark',
    );
  }

  /** After commit, the destination could not run the VM: the leases go back to the source, with a new token. */
  async giveBack(commit: Token, owner: LeaseValue['owner'], to: HandoffParty): Promise<Token> {
    const state = await this.read();
    const again = this.ownLeaseRevision(state, 'give-back');
    if (again !== undefined) return again;
    return this.txn(
      this.resources.map((r) => ({ key: buf(this.keys(r).excl), target: 'Mod', result: 'Equal', mod_revision: commit })),
      this.resources.map((r) => ({ request_put: { key: buf(this.keys(r).excl), value: buf(this.leaseValue(r, owner, to.host, 'give-back')), lease: to.session } })),
      'give-back',
    );
  }
}
