import { randomBytes } from 'node:crypto';
import { BatonError, LeaseValueSchema, MAX_RESOURCES_PER_REQUEST, wallTimeIso, type LeaseValue, type LockMode, type Token } from '@baton/core';
import type { ICompare, IRequestOp, ITxnResponse } from 'etcd3';
import type { EtcdConnection } from './connection.js';
import { KeyLayout, prefixEnd } from './keys.js';
import type { HostSession } from './session.js';

/** One resource an owner wants, as the cluster sees it. */
export interface LeaseClaim {
  lockspace: string;
  identity: string;
  mode: LockMode;
  owner: LeaseValue['owner'];
}

/** A lease this host holds in etcd: its key and its token (the key's mod revision). */
export interface HeldLease {
  key: string;
  token: Token;
}

interface Pending {
  claims: LeaseClaim[];
  session: HostSession;
  nonce: string;
  resolve(leases: HeldLease[]): void;
  reject(err: unknown): void;
}

/** etcd's default --max-txn-ops: compares, successes and failures are each limited to it. */
const MAX_TXN_OPS = 128;

const buf = (s: string): Buffer => Buffer.from(s);

/**
 * The cluster lease table: grants are compare-and-put transactions attached to the host's
 * session, and the token of a grant is the revision that wrote it. Acquires that arrive while a
 * transaction is in flight wait for it and then go together in the next one (group commit), each
 * resource costing one compare and one put. A request is all or none; a conflict in a batch sends
 * only the conflicting requests back as busy.
 */
export class LeaseTable {
  private queue: Pending[] = [];
  private flushing = false;
  private nonceSeq = 0;
  private readonly noncePrefix = randomBytes(6).toString('hex');
  /** Set when a grant's outcome could not be learned; the owner of the table sweeps. */
  orphansPossible = false;
  /** Transactions and requests committed, for the benchmark's batching figure. */
  readonly stats = { txns: 0, requests: 0 };

  constructor(
    private readonly conn: EtcdConnection,
    private readonly host: string,
  ) {}

  keyOf(claim: LeaseClaim): string {
    const resource = this.conn.keys.resource(claim.lockspace, claim.identity);
    return claim.mode === 'exclusive' ? KeyLayout.exclusive(resource) : KeyLayout.shared(resource, this.host, claim.owner.uuid);
  }

  /** Grant every claim, or none: RESOURCE_BUSY names the first conflicting resource. */
  async grant(session: HostSession, claims: LeaseClaim[]): Promise<HeldLease[]> {
    session.assertValid();
    if (claims.length > MAX_RESOURCES_PER_REQUEST) throw new BatonError('INVALID_REQUEST', `at most ${MAX_RESOURCES_PER_REQUEST} resources per acquire`);
    const { promise, resolve, reject } = Promise.withResolvers<HeldLease[]>();
    this.queue.push({ claims, session, nonce: `${this.noncePrefix}-${++this.nonceSeq}`, resolve, reject });
    if (!this.flushing) this.flush().catch((err: unknown) => this.failAll(err));
    return await promise;
  }

  private failAll(err: unknown): void {
    for (const p of this.queue.splice(0)) p.reject(err);
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.queue.length > 0) await this.commit(this.takeBatch());
    } finally {
      this.flushing = false;
    }
  }

  /** Requests in arrival order up to 128 resources, one session, no key twice. */
  private takeBatch(): Pending[] {
    const batch: Pending[] = [];
    const keys = new Set<string>();
    let resources = 0;
    const rest: Pending[] = [];
    for (const p of this.queue) {
      const pkeys = p.claims.map((c) => this.conn.keys.resource(c.lockspace, c.identity));
      const fits = resources + p.claims.length <= MAX_TXN_OPS && (batch.length === 0 || p.session === batch[0]!.session) && pkeys.every((k) => !keys.has(k));
      if (fits) {
        batch.push(p);
        resources += p.claims.length;
        for (const k of pkeys) keys.add(k);
      } else {
        rest.push(p);
      }
    }
    this.queue = rest;
    return batch;
  }

  /** The compare that makes a claim grantable: no lease in its way, no lock-delay. */
  private compareFor(claim: LeaseClaim): ICompare {
    const resource = this.conn.keys.resource(claim.lockspace, claim.identity);
    // An exclusive claim needs the resource's whole range empty; a shared one only delay and excl.
    const end = claim.mode === 'exclusive' ? prefixEnd(resource) : buf(KeyLayout.sharedFirst(resource));
    const start = claim.mode === 'exclusive' ? resource : KeyLayout.delay(resource);
    return { key: buf(start), range_end: end, target: 'Version', result: 'Equal', version: 0 };
  }

  private putFor(p: Pending, claim: LeaseClaim): IRequestOp {
    const value: LeaseValue = { v: 1, host: this.host, owner: claim.owner, lockspace: claim.lockspace, resource: claim.identity, mode: claim.mode, since: wallTimeIso(), grant: p.nonce };
    return { request_put: { key: buf(this.keyOf(claim)), value: buf(JSON.stringify(value)), lease: p.session.id } };
  }

  private async commit(batch: Pending[]): Promise<void> {
    let live = batch;
    while (live.length > 0) {
      const claims = live.flatMap((p) => p.claims);
      let res: ITxnResponse;
      try {
        res = await this.conn.txn(
          {
            compare: claims.map((c) => this.compareFor(c)),
            success: live.flatMap((p) => p.claims.map((c) => this.putFor(p, c))),
            failure: claims.map((c) => ({ request_range: { ...this.rangeOf(this.compareFor(c)), count_only: true } })),
          },
          'a grant',
        );
      } catch (err) {
        await this.resolveAmbiguous(live, err);
        return;
      }
      if (res.succeeded) {
        this.stats.txns++;
        this.stats.requests += live.length;
        const token = Number(res.header.revision);
        for (const p of live) p.resolve(p.claims.map((c) => ({ key: this.keyOf(c), token })));
        return;
      }
      // Which claims found something in the way: those requests are busy, the rest go again.
      let i = 0;
      const next: Pending[] = [];
      for (const p of live) {
        const busy = p.claims.findIndex((_, j) => Number(res.responses[i + j]?.response_range.count ?? 0) > 0);
        i += p.claims.length;
        if (busy < 0) next.push(p);
        else p.reject(this.busy(p.claims[busy]!));
      }
      live = next;
    }
  }

  private rangeOf(c: ICompare): { key: Buffer; range_end: Buffer } {
    return { key: c.key!, range_end: c.range_end! };
  }

  private busy(claim: LeaseClaim): BatonError {
    return new BatonError('RESOURCE_BUSY', `"${claim.identity}" is leased ${claim.mode === 'exclusive' ? 'in some mode' : 'exclusive or delayed'} by another owner in the cluster`, {
      details: { resource: claim.identity, lockspace: claim.lockspace, mode: claim.mode },
    });
  }

  /**
   * The transaction's reply was lost (a leader died, a deadline passed): it may or may not have
   * committed. The nonce written with it says which. If even that cannot be read, the request
   * fails UNAVAILABLE and whatever it may have written is swept later (`sweepOrphans`).
   */
  private async resolveAmbiguous(batch: Pending[], err: unknown): Promise<void> {
    const first = batch[0]!;
    const probeKey = this.keyOf(first.claims[0]!);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const res = await this.conn.range(probeKey);
        const kv = res.kvs[0];
        const value = kv === undefined ? undefined : LeaseValueSchema.safeParse(JSON.parse(kv.value.toString()));
        if (kv && value?.success && value.data.grant === first.nonce) {
          const token = Number(kv.mod_revision);
          this.stats.txns++;
          this.stats.requests += batch.length;
          for (const p of batch) p.resolve(p.claims.map((c) => ({ key: this.keyOf(c), token })));
        } else {
          for (const p of batch) p.reject(err);
        }
        return;
      } catch {
        // The cluster may be electing a leader; try again within the session's own deadline.
        if (!first.session.isValid) break;
      }
    }
    this.orphansPossible = true;
    for (const p of batch) p.reject(err);
  }

  /**
   * Delete this session's leases that no grant handed out accounts for (an ambiguous commit that
   * did land). `known` holds the keys the host's lock table has.
   */
  async sweepOrphans(session: HostSession, known: ReadonlySet<string>): Promise<number> {
    this.orphansPossible = false;
    const res = await this.conn.range(this.conn.keys.resources, { prefix: true });
    const orphans = res.kvs.filter((kv) => String(kv.lease) === session.id && !known.has(kv.key.toString()));
    if (orphans.length > 0) await this.release(orphans.map((kv) => ({ key: kv.key.toString(), token: Number(kv.mod_revision) })));
    return orphans.length;
  }

  /** The leases a session holds, with their values: what a restarted agent re-adopts. */
  async leasesOf(sessionId: string): Promise<(HeldLease & { value: LeaseValue })[]> {
    const res = await this.conn.range(this.conn.keys.resources, { prefix: true });
    return res.kvs.flatMap((kv) => {
      if (String(kv.lease) !== sessionId) return [];
      const value = LeaseValueSchema.safeParse(JSON.parse(kv.value.toString()));
      return value.success ? [{ key: kv.key.toString(), token: Number(kv.mod_revision), value: value.data }] : [];
    });
  }

  /**
   * After the host lost a session and opened a new one: move an owner's leases to the new session
   * with new tokens, in one transaction, if each is still the old grant or free. Otherwise
   * RESOURCE_BUSY, and nothing changes (the owner stays fenced).
   */
  async regrant(session: HostSession, items: readonly { claim: LeaseClaim; previous: HeldLease }[]): Promise<HeldLease[]> {
    session.assertValid();
    const nonce = `${this.noncePrefix}-${++this.nonceSeq}`;
    const current = await Promise.all(items.map((it) => this.conn.range(it.previous.key)));
    const pending: Pending = { claims: items.map((it) => it.claim), session, nonce, resolve: () => {}, reject: () => {} };
    const res = await this.conn.txn(
      {
        compare: items.map((it, i) => {
          const kv = current[i]!.kvs[0];
          return kv === undefined ? this.compareFor(it.claim) : { key: buf(it.previous.key), target: 'Mod', result: 'Equal', mod_revision: it.previous.token };
        }),
        success: items.map((it) => this.putFor(pending, it.claim)),
      },
      'a re-grant',
    );
    if (!res.succeeded) throw this.busy(items[0]!.claim);
    const token = Number(res.header.revision);
    return items.map((it) => ({ key: this.keyOf(it.claim), token }));
  }

  /** Delete leases, each only if it is still the grant with that token (never someone else's). */
  async release(leases: readonly HeldLease[]): Promise<void> {
    for (let i = 0; i < leases.length; i += MAX_TXN_OPS) {
      const chunk = leases.slice(i, i + MAX_TXN_OPS);
      const res = await this.conn.txn(
        {
          compare: chunk.map((l) => ({ key: buf(l.key), target: 'Mod', result: 'Equal', mod_revision: l.token })),
          success: chunk.map((l) => ({ request_delete_range: { key: buf(l.key) } })),
        },
        'a release',
      );
      // Some lease was already gone or replaced: delete the others one by one.
      if (!res.succeeded && chunk.length > 1) for (const l of chunk) await this.release([l]);
    }
  }
}
