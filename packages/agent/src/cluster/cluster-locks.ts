import { setTimeout as delay } from 'node:timers/promises';
import { asBatonError, Backoff, BatonError, canonicalUuid, type Grant, type LockMode, type ResourceRef } from '@baton/core';
import type { HeldLease, HostSession, LeaseClaim, LeaseTable } from '@baton/etcd';
import type { HypervisorDriver } from '../hypervisor/driver.js';
import type { LockManager } from '../locks/lock-manager.js';
import type { Logger } from '../logger.js';
import type { OwnerRecord, OwnerRegistry } from '../owners/owner-registry.js';
import type { PolicyFile } from '../state/policy-file.js';
import { isProcessAlive, processStartTime } from '../sys/index.js';
import type { ClusterMember } from './cluster-member.js';
import type { Fencer } from './fencer.js';

export interface ClusterLocksOptions {
  member: ClusterMember;
  locks: LockManager;
  registry: OwnerRegistry;
  fencer: Fencer;
  log: Logger;
  host: string;
  /**
   * The VMs this host's hypervisor driver runs, if it has one: their processes (a lease moved here
   * by a migration names no pid), the policies definitions gave them since their leases were
   * granted, and the new tokens handed to them after a lost session (they write under them).
   */
  vms?: { driver: Pick<HypervisorDriver, 'find' | 'regrant'>; policies: PolicyFile };
}

/**
 * The host's locks when a cluster is configured. Order of an acquire: the cluster lease first (its
 * token is the grant's token), then the local lock; if the local lock fails, the lease is given
 * back. A release drops the local lock, then the lease. The rule after a lost session is here too.
 */
export class ClusterLocks {
  /** owner + resource pairs being acquired, so one owner cannot race itself for one resource. */
  private readonly inFlight = new Set<string>();
  /** Releases started by `releaseLater`, each with its owner. */
  private readonly background = new Map<Promise<void>, string>();

  constructor(private readonly opts: ClusterLocksOptions) {}

  private claim(record: OwnerRecord, lockspace: string, identity: string, mode: LockMode): LeaseClaim {
    const { owner, startTime, onLeaseLoss } = record;
    return {
      lockspace,
      identity,
      mode,
      owner: { uuid: owner.uuid, name: owner.name, ...(owner.pid === undefined ? {} : { pid: owner.pid }), ...(startTime === undefined ? {} : { startTime }), onLeaseLoss },
    };
  }

  async acquire(record: OwnerRecord, refs: readonly ResourceRef[]): Promise<Grant[]> {
    const { locks, member } = this.opts;
    const owner = record.owner.uuid;
    const plan = locks.plan(owner, refs);
    const pairs = plan.map((p) => `${owner}\0${p.key}`);
    const racing = plan.find((_, i) => this.inFlight.has(pairs[i]!));
    if (racing) throw new BatonError('RESOURCE_BUSY', `"${racing.identity}" is being acquired by this owner already`, { details: { resource: racing.identity } });
    for (const k of pairs) this.inFlight.add(k);
    try {
      const leases = await member.grant(plan.map((p) => this.claim(record, p.lockspace.name, p.identity, p.ref.mode)));
      try {
        if (record.state !== 'live' || this.opts.registry.get(owner) !== record) throw new BatonError('DENIED', `owner ${owner} went away while its leases were granted`);
        return locks.commit(owner, plan, leases.map((l) => l.token));
      } catch (err) {
        await member.release(leases);
        throw err;
      }
    } finally {
      for (const k of pairs) this.inFlight.delete(k);
    }
  }

  private leasesOf(owner: string, grants: readonly Grant[]): HeldLease[] {
    return grants.map((g) => ({ key: this.opts.member.table.keyOf({ lockspace: g.lockspace, identity: g.resource, mode: g.mode, owner: { uuid: owner, name: '' } }), token: g.token }));
  }

  /** The etcd keys of every lock the host's table holds. */
  heldKeys(): Set<string> {
    return new Set(this.opts.locks.list().map(({ grant, owner }) => this.leasesOf(owner, [grant])[0]!.key));
  }

  /** Give back the leases of grants already released locally. */
  release(owner: string, grants: readonly Grant[]): Promise<void> {
    return this.opts.member.release(this.leasesOf(owner, grants));
  }

  /** The same, when nobody waits for the answer (an owner that died). */
  releaseLater(owner: string, grants: readonly Grant[]): void {
    const p = this.release(owner, grants).finally(() => this.background.delete(p));
    this.background.set(p, owner);
  }

  /**
   * The session is lost on this host's clock: every owner holding locks is stopped by its own
   * policy. Killed owners release their local locks once their process is gone; paused ones (and
   * owners with no process to stop) keep them, `fenced`, until the leases come back or they die.
   */
  fenceAll(): void {
    const { registry, locks, fencer } = this.opts;
    for (const record of registry.all()) {
      if (!locks.holdsAny(record.owner.uuid) || record.state !== 'live') continue;
      record.state = record.onLeaseLoss.policy === 'pause' || record.owner.pid === undefined ? 'fenced' : 'terminating';
      fencer.fence(record);
    }
  }

  /**
   * The documented rule after a lost session: a fenced owner that is still there gets all of its
   * leases back in the new session, with new tokens, in one transaction, if each is still its old
   * grant or free; then it is resumed. Otherwise it stays fenced (paused, locks held locally) and
   * the operator decides.
   */
  async recover(session: HostSession): Promise<void> {
    const { registry, locks, fencer, log } = this.opts;
    for (const record of registry.all()) {
      if (record.state !== 'fenced') continue;
      const owner = record.owner.uuid;
      const grants = locks.grantsOf(owner);
      const previous = this.leasesOf(owner, grants);
      try {
        const leases = await this.regrant(
          session,
          grants.map((g, i) => ({ claim: this.claim(record, g.lockspace, g.resource, g.mode), previous: previous[i]! })),
        );
        locks.retoken(owner, new Map(grants.map((g, i) => [locks.keyOf(g), leases[i]!.token])));
        record.state = 'live';
        await fencer.resume(record).catch((err: unknown) => {
          log.error({ owner: record.owner, err: (err as Error).message }, `${record.owner.name} got its leases back but its hypervisor did not unpause it`);
        });
        // After the resume: a stopped VM cannot take them. Until then it writes under its old
        // tokens, which every disk refuses if anyone wrote under a newer one meanwhile.
        await this.regrantVm(owner, locks.grantsOf(owner)).catch((err: unknown) => {
          log.error({ owner: record.owner, err: (err as Error).message }, `${record.owner.name} was resumed but its VM did not take its new tokens`);
        });
        log.warn({ owner: record.owner, tokens: leases.map((l) => l.token) }, `${record.owner.name} got its leases back with new tokens and was resumed`);
      } catch (err) {
        log.error({ owner: record.owner, err: (err as Error).message }, `${record.owner.name} stays fenced: its leases could not be re-granted`);
      }
    }
  }

  /**
   * The re-grant, tried again (same nonce: an attempt that landed unanswered is found, not
   * refused) while etcd is only unreachable, a leader elected just as the partition healed, and
   * the session is still this host's and valid. Refused for good (RESOURCE_BUSY: another holds a
   * disk now) it throws. Granted on a session that is no longer valid when the answer comes, the
   * leases go back: resuming the owner would run it on a session past its deadline.
   */
  private async regrant(session: HostSession, items: Parameters<LeaseTable['regrant']>[1]): Promise<HeldLease[]> {
    const { member } = this.opts;
    const current = (): boolean => session.isValid && member.session === session;
    const nonce = member.table.nextNonce();
    const backoff = new Backoff(member.timing.keepaliveMs / 8, member.timing.keepaliveMs);
    for (;;) {
      if (!current()) throw new BatonError('LEASE_LOST', `session ${session.id} was lost before the leases came back`);
      try {
        const leases = await member.table.regrant(session, items, nonce);
        if (current()) return leases;
        await member.release(leases);
        throw new BatonError('LEASE_LOST', `session ${session.id} was lost while the leases came back`);
      } catch (err) {
        if (asBatonError(err).code !== 'UNAVAILABLE') throw err;
        await delay(backoff.next(), undefined, { signal: session.lost }).catch(() => undefined);
      }
    }
  }

  /**
   * After a crash and restart with the session adopted: owners whose process still runs get their
   * local locks back under their tokens (re-adopted, watched by pid until the VM reconnects);
   * leases of owners that died meanwhile are released.
   */
  async adopt(session: HostSession): Promise<void> {
    const { registry, locks, member, fencer, log, host } = this.opts;
    const byOwner = new Map<string, Awaited<ReturnType<typeof member.table.leasesOf>>>();
    for (const l of await member.table.leasesOf(session.id)) {
      if (l.value.host !== host) continue;
      // A lease value is any agent version's writing: its uuid in the one spelling the registry and the locks key by.
      const uuid = canonicalUuid(l.value.owner.uuid);
      byOwner.set(uuid, [...(byOwner.get(uuid) ?? []), l]);
    }
    for (const [uuid, leases] of byOwner) {
      const o = leases[0]!.value.owner;
      const pid = o.pid ?? (await this.opts.vms?.driver.find(uuid))?.pid;
      const startTime = o.startTime ?? (pid === undefined ? undefined : processStartTime(pid));
      const alive = pid !== undefined && startTime !== undefined && isProcessAlive(pid, startTime);
      if (!alive) {
        await member.release(leases);
        log.info({ owner: uuid, released: leases.length }, `owner ${o.name} died while the agent was down; its leases are released`);
        continue;
      }
      const record = registry.adopt({ uuid, name: o.name, pid }, startTime, this.opts.vms?.policies.get(uuid) ?? o.onLeaseLoss ?? { policy: 'kill' });
      try {
        const plan = locks.plan(uuid, leases.map((l) => ({ name: l.value.resource, lockspace: l.value.lockspace, mode: l.value.mode })));
        locks.commit(uuid, plan, leases.map((l) => l.token));
        log.info({ owner: record.owner, tokens: leases.map((l) => l.token) }, `re-adopted ${o.name} with ${leases.length} lease(s)`);
      } catch (err) {
        log.error({ owner: record.owner, err: (err as Error).message }, `could not re-take the local locks of ${o.name}; fencing it`);
        record.state = 'terminating';
        fencer.fence(record);
      }
    }
  }

  /** A VM the driver runs takes its new tokens; an owner that is not one (it asks `watchdog`) is left alone. */
  private async regrantVm(uuid: string, grants: readonly Grant[]): Promise<void> {
    const driver = this.opts.vms?.driver;
    if (driver && (await driver.find(uuid))) await driver.regrant(uuid, grants);
  }

  /** Once the releases `releaseLater` started, for `owner` or for all, have ended (release failures are the sweep's). */
  async drained(owner?: string): Promise<void> {
    await Promise.all([...this.background].filter(([, o]) => owner === undefined || o === owner).map(([p]) => p));
  }

  async close(): Promise<void> {
    await this.drained();
  }
}
