import { randomBytes } from 'node:crypto';
import { BatonError, LeaseValueSchema, MAX_RESOURCES_PER_REQUEST, wallTimeIso, type LeaseValue, type LockMode, type MonotonicClock, type Token } from '@baton/core';
import type { ICompare, IKeyValue, IRequestOp, ITxnResponse } from 'etcd3';
import type { EtcdConnection } from './connection.js';
import { HandoffMarkerSchema, type HandoffMarker } from './handoff.js';
import { KeyLayout, prefixEnd } from './keys.js';
import { parseValue } from './values.js';
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

/** A claim with its keys and its compare, computed once per request (the key costs a sha256). */
interface Target {
  claim: LeaseClaim;
  /** The resource's key prefix, shared by all of its keys. */
  prefix: string;
  key: string;
  compare: ICompare;
}

interface Pending {
  targets: Target[];
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
  /** Nonces of grants not yet answered: the sweep must not take a lease that is being handed out. */
  private readonly unanswered = new Set<string>();
  private flushing = false;
  private nonceSeq = 0;
  private readonly noncePrefix = randomBytes(6).toString('hex');
  /** Set when a grant's outcome could not be learned; the owner of the table sweeps. */
  orphansPossible = false;
  /** Transactions and requests committed, for the benchmark's batching figure. */
  readonly stats = { txns: 0, requests: 0 };

  /** Unclean-loss markers this host has seen, with when it first saw them (monotonic ms). */
  private readonly markersSeen = new Map<string, number>();

  constructor(
    private readonly conn: EtcdConnection,
    private readonly host: string,
    private readonly lockDelay: { ms: number; clock: MonotonicClock } = { ms: 0, clock: { now: () => 0 } },
  ) {}

  /** With lock-delay on, an exclusive grant also writes its unclean-loss marker. */
  private opsOf(targets: readonly Target[]): number {
    return this.lockDelay.ms > 0 ? targets.reduce((n, t) => n + (t.claim.mode === 'exclusive' ? 2 : 1), 0) : targets.length;
  }

  /**
   * A claim's key, and the compare that makes it grantable: an exclusive claim needs nothing under
   * the resource's prefix (no lease of any mode, no handoff, no unclean-loss marker); a shared one
   * nothing from `excl` up to the shared leases (no exclusive lease, no handoff).
   */
  private target(claim: LeaseClaim): Target {
    const prefix = this.conn.keys.resource(claim.lockspace, claim.identity);
    if (claim.mode === 'exclusive') {
      return { claim, prefix, key: KeyLayout.exclusive(prefix), compare: { key: buf(prefix), range_end: prefixEnd(prefix), target: 'Version', result: 'Equal', version: 0 } };
    }
    const compare: ICompare = { key: buf(KeyLayout.exclusive(prefix)), range_end: buf(KeyLayout.sharedPrefix(prefix)), target: 'Version', result: 'Equal', version: 0 };
    return { claim, prefix, key: KeyLayout.shared(prefix, this.host, claim.owner.uuid), compare };
  }

  keyOf(claim: LeaseClaim): string {
    return this.target(claim).key;
  }

  /** Grant every claim, or none: RESOURCE_BUSY names the first conflicting resource. */
  async grant(session: HostSession, claims: LeaseClaim[]): Promise<HeldLease[]> {
    session.assertValid();
    if (claims.length > MAX_RESOURCES_PER_REQUEST) throw new BatonError('INVALID_REQUEST', `at most ${MAX_RESOURCES_PER_REQUEST} resources per acquire`);
    const { promise, resolve, reject } = Promise.withResolvers<HeldLease[]>();
    const nonce = this.nextNonce();
    this.unanswered.add(nonce);
    this.queue.push({ targets: claims.map((c) => this.target(c)), session, nonce, resolve, reject });
    if (!this.flushing) this.flush().catch((err: unknown) => this.failAll(err));
    try {
      return await promise;
    } finally {
      this.unanswered.delete(nonce);
    }
  }

  private failAll(err: unknown): void {
    for (const p of this.queue.splice(0)) p.reject(err);
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.takeBatch();
        // Whatever fails on the way (a read for lock-delay, a read-back), every request of the
        // batch is answered: settling a settled promise changes nothing.
        await this.commit(batch).catch((err: unknown) => {
          for (const p of batch) p.reject(err);
        });
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Requests in arrival order up to 128 resources, one session, no key twice. */
  private takeBatch(): Pending[] {
    const batch: Pending[] = [];
    const keys = new Set<string>();
    let ops = 0;
    const rest: Pending[] = [];
    for (const p of this.queue) {
      const fits = ops + this.opsOf(p.targets) <= MAX_TXN_OPS && (batch.length === 0 || p.session === batch[0]!.session) && p.targets.every((t) => !keys.has(t.prefix));
      if (fits) {
        batch.push(p);
        ops += this.opsOf(p.targets);
        for (const t of p.targets) keys.add(t.prefix);
      } else {
        rest.push(p);
      }
    }
    this.queue = rest;
    return batch;
  }

  private putsFor(t: Target, nonce: string, session: HostSession): IRequestOp[] {
    const { claim } = t;
    const value: LeaseValue = { v: 1, host: this.host, owner: claim.owner, lockspace: claim.lockspace, resource: claim.identity, mode: claim.mode, since: wallTimeIso(), grant: nonce };
    const put: IRequestOp = { request_put: { key: buf(t.key), value: buf(JSON.stringify(value)), lease: session.id } };
    if (this.lockDelay.ms === 0 || claim.mode !== 'exclusive') return [put];
    // The marker is on no session: only a release deletes it; an expiry leaves it behind.
    return [put, { request_put: { key: buf(KeyLayout.heldMarker(t.key)), value: buf(JSON.stringify({ host: this.host, session: session.id })) } }];
  }

  private async commit(batch: Pending[]): Promise<void> {
    let live = batch;
    while (live.length > 0) {
      const targets = live.flatMap((p) => p.targets);
      let res: ITxnResponse;
      try {
        res = await this.conn.txn(
          {
            compare: targets.map((t) => t.compare),
            success: live.flatMap((p) => p.targets.flatMap((t) => this.putsFor(t, p.nonce, p.session))),
            // On a conflict, how much stands in each claim's way: the same range its compare covers.
            failure: targets.map((t) => ({ request_range: { key: t.compare.key!, range_end: t.compare.range_end!, count_only: true } })),
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
        for (const p of live) p.resolve(p.targets.map((t) => ({ key: t.key, token })));
        return;
      }
      // Which claims found something in the way: those requests are busy, the rest go again.
      let i = 0;
      const next: Pending[] = [];
      for (const p of live) {
        const busy = p.targets.find((_, j) => Number(res.responses[i + j]?.response_range.count ?? 0) > 0);
        i += p.targets.length;
        const obstacle = busy && (await this.obstacle(busy));
        if (!busy || obstacle === 'cleared') next.push(p);
        else p.reject(this.busy(busy.claim, obstacle));
      }
      live = next;
    }
  }

  /**
   * Chubby's lock-delay. An exclusive claim found only the marker a vanished holder left (its lease
   * expired or its host was fenced by an operator; a release deletes both): the resource is free
   * once this host has seen the marker for lockDelay ms. Then the marker is removed and the claim
   * goes again. Measured from this host's first sight, on its monotonic clock: no clocks compared.
   * Returns what keeps the claim out when it is not a lease: a migration's handoff (its marker
   * stands from begin until the destination runs the VM, even with no lease left under it), or the
   * lock-delay still to run.
   */
  private async obstacle(t: Target): Promise<'cleared' | { leftMs: number } | { handoff: HandoffMarker } | undefined> {
    const res = await this.conn.range(t.prefix, { prefix: true });
    const handoff = parseValue(HandoffMarkerSchema, res.kvs.find((kv) => kv.key.toString() === KeyLayout.handoffMarker(t.prefix)));
    if (handoff) return { handoff };
    if (t.claim.mode !== 'exclusive') return undefined;
    const marker = KeyLayout.heldMarker(t.key);
    if (res.kvs.length !== 1 || res.kvs[0]!.key.toString() !== marker) return undefined;
    const seenKey = `${marker}@${String(res.kvs[0]!.mod_revision)}`;
    const now = this.lockDelay.clock.now();
    this.forgetStaleMarkers(now);
    const first = this.markersSeen.get(seenKey) ?? now;
    this.markersSeen.set(seenKey, first);
    const left = first + this.lockDelay.ms - now;
    if (left > 0) return { leftMs: Math.ceil(left) };
    // Forgotten only once the marker is gone: a delete that fails leaves the delay served, and the
    // next claim clears the marker at once instead of waiting a second lock-delay.
    await this.conn.txn(
      { compare: [{ key: buf(marker), target: 'Mod', result: 'Equal', mod_revision: res.kvs[0]!.mod_revision }], success: [{ request_delete_range: { key: buf(marker) } }] },
      'clearing a vanished holder’s marker',
    );
    this.markersSeen.delete(seenKey);
    return 'cleared';
  }

  /**
   * A marker another host cleared is never seen here again; its entry would stay for the life of
   * the process. Entries first seen more than a few lock-delays ago go: a marker still there and
   * claimed only now is kept one lock-delay more, which errs on the safe side.
   */
  private forgetStaleMarkers(now: number): void {
    for (const [key, first] of this.markersSeen) if (now - first > 4 * this.lockDelay.ms) this.markersSeen.delete(key);
  }

  private busy(claim: LeaseClaim, delayed?: { leftMs: number } | { handoff: HandoffMarker }): BatonError {
    if (delayed && 'handoff' in delayed) {
      const { migration, source, destination } = delayed.handoff;
      return new BatonError('RESOURCE_BUSY', `"${claim.identity}" is in the handoff of migration ${migration} (${source} → ${destination}); it is free only once that migration has ended and released it`, {
        details: { resource: claim.identity, lockspace: claim.lockspace, migration },
      });
    }
    if (delayed) {
      return new BatonError('RESOURCE_BUSY', `"${claim.identity}" was held by a holder that vanished without releasing it; lock-delay keeps it for ${delayed.leftMs} ms more`, {
        details: { resource: claim.identity, lockspace: claim.lockspace, lockDelayLeftMs: delayed.leftMs },
      });
    }
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
    const probeKey = first.targets[0]!.key;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const res = await this.conn.range(probeKey);
        const kv = res.kvs[0];
        if (kv && parseValue(LeaseValueSchema, kv)?.grant === first.nonce) {
          const token = Number(kv.mod_revision);
          this.stats.txns++;
          this.stats.requests += batch.length;
          for (const p of batch) p.resolve(p.targets.map((t) => ({ key: t.key, token })));
        } else {
          // Not there when read; a proposal still in the leader's log could land after the read:
          // the next sweep looks.
          this.orphansPossible = true;
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
   * Delete this session's leases that no grant accounts for: an ambiguous commit that did land, a
   * release whose delete failed. `known` gives the keys the host's lock table holds.
   */
  async sweepOrphans(session: HostSession, known: () => ReadonlySet<string>): Promise<number> {
    // Cleared first: an orphan made while this sweep runs sets it again for the next one.
    this.orphansPossible = false;
    try {
      const res = await this.conn.range(this.conn.keys.resources, { prefix: true });
      // Read what the host holds after the range: a grant answered meanwhile is in it by now.
      const held = known();
      const orphans = res.kvs.filter((kv) => {
        if (String(kv.lease) !== session.id || held.has(kv.key.toString())) return false;
        const grant = parseValue(LeaseValueSchema, kv)?.grant;
        return !(grant !== undefined && this.unanswered.has(grant));
      });
      if (orphans.length > 0) await this.release(orphans.map((kv) => ({ key: kv.key.toString(), token: Number(kv.mod_revision) })));
      return orphans.length;
    } catch (err) {
      // A sweep that failed (etcd changing leaders, say) found nothing out: the next one must run.
      this.orphansPossible = true;
      throw err;
    }
  }

  /** The leases a session holds, with their values: what a restarted agent re-adopts. */
  async leasesOf(sessionId: string): Promise<(HeldLease & { value: LeaseValue })[]> {
    const res = await this.conn.range(this.conn.keys.resources, { prefix: true });
    return res.kvs.flatMap((kv) => {
      const value = String(kv.lease) === sessionId ? parseValue(LeaseValueSchema, kv) : undefined;
      return value ? [{ key: kv.key.toString(), token: Number(kv.mod_revision), value }] : [];
    });
  }

  /** A name for one grant, written into its leases: a later read tells whether it landed. */
  nextNonce(): string {
    return `${this.noncePrefix}-${++this.nonceSeq}`;
  }

  /**
   * After the host lost a session and opened a new one: move an owner's leases to the new session
   * with new tokens, in one transaction, if each is still the old grant or free. Otherwise
   * RESOURCE_BUSY, and nothing changes (the owner stays fenced). Tried again with the same
   * `nonce` after an answer that never came, it finds its own leases if that attempt landed.
   */
  async regrant(session: HostSession, items: readonly { claim: LeaseClaim; previous: HeldLease }[], nonce = this.nextNonce()): Promise<HeldLease[]> {
    session.assertValid();
    const targets = items.map((it) => this.target(it.claim));
    // One read of each resource's prefix sees the old lease and its marker at one revision.
    const reads = await Promise.all(targets.map((t) => this.conn.range(t.prefix, { prefix: true })));
    const kvOf = (i: number, key: string): IKeyValue | undefined => reads[i]!.kvs.find((kv) => kv.key.toString() === key);
    const current = targets.map((t, i) => kvOf(i, t.key));
    const ours = (kv: IKeyValue | undefined): kv is IKeyValue => kv !== undefined && String(kv.lease) === session.id && parseValue(LeaseValueSchema, kv)?.grant === nonce;
    if (current.every(ours)) return targets.map((t, i) => ({ key: t.key, token: Number(current[i]!.mod_revision) }));
    const revisionOf = (i: number, key: string): string | undefined => kvOf(i, key)?.mod_revision;
    const res = await this.conn.txn(
      {
        compare: targets.flatMap((t, i) => this.regrantCompares(t, items[i]!.previous, revisionOf(i, items[i]!.previous.key), revisionOf(i, KeyLayout.heldMarker(t.key)))),
        success: targets.flatMap((t) => this.putsFor(t, nonce, session)),
      },
      'a re-grant',
    );
    if (!res.succeeded) throw this.busy(items[0]!.claim);
    const token = Number(res.header.revision);
    return targets.map((t) => ({ key: t.key, token }));
  }

  /**
   * A lease can be re-granted if it is still the old grant; or, gone with the old session, if
   * nothing else took the resource since (for an exclusive one: no shared lease, and the
   * unclean-loss marker, if any, unchanged: it is this host's own).
   */
  private regrantCompares(t: Target, previous: HeldLease, current: string | undefined, marker: string | undefined): ICompare[] {
    const key = previous.key;
    if (current !== undefined) return [{ key: buf(key), target: 'Mod', result: 'Equal', mod_revision: previous.token }];
    if (t.claim.mode === 'shared') return [t.compare];
    const shared = KeyLayout.sharedPrefix(t.prefix);
    return [
      { key: buf(key), target: 'Version', result: 'Equal', version: 0 },
      { key: buf(shared), range_end: prefixEnd(shared), target: 'Version', result: 'Equal', version: 0 },
      marker === undefined
        ? { key: buf(KeyLayout.heldMarker(key)), target: 'Version', result: 'Equal', version: 0 }
        : { key: buf(KeyLayout.heldMarker(key)), target: 'Mod', result: 'Equal', mod_revision: marker },
    ];
  }

  private releases: { leases: readonly HeldLease[]; resolve(): void; reject(err: unknown): void }[] = [];
  private releasing = false;

  /**
   * Delete leases, each only if it is still the grant with that token (never someone else's).
   * Releases are group-committed like grants: those that arrive while a delete is in flight go
   * together in the next transaction (without it, a release cost a transaction of its own and
   * capped the agent's throughput at about half of what etcd takes).
   */
  async release(leases: readonly HeldLease[]): Promise<void> {
    if (leases.length === 0) return;
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.releases.push({ leases, resolve, reject });
    if (!this.releasing) this.flushReleases().catch(() => undefined);
    await promise;
  }

  private async flushReleases(): Promise<void> {
    this.releasing = true;
    try {
      while (this.releases.length > 0) {
        const batch = this.releases.splice(0);
        try {
          await this.releaseNow(batch.flatMap((r) => r.leases));
          for (const r of batch) r.resolve();
        } catch (err) {
          for (const r of batch) r.reject(err);
        }
      }
    } finally {
      this.releasing = false;
    }
  }

  private async releaseNow(leases: readonly HeldLease[]): Promise<void> {
    // A clean release takes the unclean-loss marker with it (deleting an absent key is harmless).
    const deletes = (l: HeldLease): IRequestOp[] =>
      l.key.endsWith('/excl') && this.lockDelay.ms > 0
        ? [{ request_delete_range: { key: buf(l.key) } }, { request_delete_range: { key: buf(KeyLayout.heldMarker(l.key)) } }]
        : [{ request_delete_range: { key: buf(l.key) } }];
    const per = this.lockDelay.ms > 0 ? MAX_TXN_OPS / 2 : MAX_TXN_OPS;
    for (let i = 0; i < leases.length; i += per) {
      const chunk = leases.slice(i, i + per);
      const res = await this.conn.txn(
        {
          compare: chunk.map((l) => ({ key: buf(l.key), target: 'Mod', result: 'Equal', mod_revision: l.token })),
          success: chunk.flatMap(deletes),
        },
        'a release',
      );
      // Some lease was already gone or replaced: delete the others one by one.
      if (!res.succeeded && chunk.length > 1) for (const l of chunk) await this.releaseNow([l]);
    }
  }
}
