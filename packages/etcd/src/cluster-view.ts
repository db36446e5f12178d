import {
  BatonError,
  FenceAuditSchema,
  HostRecordSchema,
  isClosedPhase,
  LeaseValueSchema,
  leaseTiming,
  wallTimeIso,
  type ClusterLease,
  type FenceAudit,
  type HostRecord,
  type HostView,
} from '@baton/core';
import type { EtcdConnection } from './connection.js';
import { MigrationStore } from './migration-store.js';
import { parseValue } from './values.js';


/** Sessions as hex, the way etcdctl prints lease ids. */
function sessionHex(lease: string | number): string {
  return BigInt(lease).toString(16);
}

/**
 * How long ago a session's last keepalive arrived, at least. etcd restarts the TTL on a keepalive
 * and reports what is left rounded down to whole seconds, so `granted - left` overstates the age by
 * up to a second; the lower bound is what a decision (may this host be declared dead?) can use.
 */
function keepaliveAgeSeconds(ttl: { grantedTTL: string | number; TTL: string | number }): number {
  return Math.max(0, Number(ttl.grantedTTL) - Number(ttl.TTL) - 1);
}

/** The cluster as etcd records it: hosts, leases, and the operator's fence declarations. */
export class ClusterView {
  constructor(private readonly conn: EtcdConnection) {}

  async leases(): Promise<ClusterLease[]> {
    return (await this.leaseEntries()).map((e) => e.lease);
  }

  /** Every lease, with the id of the session it hangs on (the view shows it in hex). */
  private async leaseEntries(): Promise<{ lease: ClusterLease; sessionId: string }[]> {
    const res = await this.conn.range(this.conn.keys.resources, { prefix: true });
    return res.kvs.flatMap((kv) => {
      const v = parseValue(LeaseValueSchema, kv);
      if (!v) return [];
      const { host, owner, lockspace, resource, mode, since } = v;
      const lease = { lockspace, resource, mode, host, owner: { uuid: owner.uuid, name: owner.name, ...(owner.onLeaseLoss === undefined ? {} : { onLeaseLoss: owner.onLeaseLoss }) }, token: Number(kv.mod_revision), since, session: sessionHex(kv.lease) };
      return [{ lease, sessionId: String(kv.lease) }];
    });
  }

  private async hostRecords(): Promise<{ record: HostRecord; session: string }[]> {
    const res = await this.conn.range(this.conn.keys.hosts, { prefix: true });
    return res.kvs.flatMap((kv) => {
      const record = parseValue(HostRecordSchema, kv);
      return record ? [{ record, session: String(kv.lease) }] : [];
    });
  }

  async hosts(): Promise<HostView[]> {
    const records = await this.hostRecords();
    return Promise.all(
      records.map(async ({ record, session }) => {
        const ttl = await this.conn.leaseTimeToLive(session);
        const { v: _v, ...rest } = record;
        const left = Number(ttl.TTL);
        return { ...rest, session: sessionHex(session), ttlLeftSeconds: left, lastKeepaliveAgoSeconds: left < 0 ? -1 : keepaliveAgeSeconds(ttl) };
      }),
    );
  }

  /**
   * An operator says `host` is dead and fenced (powered off, its VMs gone): free its leases now
   * instead of at session expiry. Refused while the host still renews its session; recorded in
   * etcd under audit/ before anything is released. A host whose session has expired already has
   * nothing left to release, but may still be declared while a migration names it: the
   * coordinator then answers its steps (its copies are gone) and the migration ends.
   */
  async fenceHost(host: string, by: FenceAudit['by'], reason: string): Promise<{ released: number; audit: string }> {
    const records = await this.hostRecords();
    const found = records.find((r) => r.record.host === host);
    const entries = (await this.leaseEntries()).filter((e) => e.lease.host === host);
    const leases = entries.map((e) => e.lease);
    if (found) {
      const ttl = await this.conn.leaseTimeToLive(found.session);
      const since = keepaliveAgeSeconds(ttl) * 1000;
      const { warnMs } = leaseTiming(found.record.ttlSeconds);
      if (Number(ttl.TTL) > 0 && since < warnMs) {
        throw new BatonError('HOST_ALIVE', `host ${host} renewed its session ${Math.round(since / 1000)} s ago; it is alive, and fencing it by declaration would give its running VMs' disks away`, {
          details: { host, lastKeepaliveAgoSeconds: since / 1000 },
        });
      }
    }
    if (!found && leases.length === 0 && !(await this.inOpenMigration(host))) {
      throw new BatonError('INVALID_REQUEST', `host ${host} has no session, no leases and no migration in etcd`, { details: { host } });
    }
    const audit: FenceAudit = FenceAuditSchema.parse({
      v: 1,
      host,
      by,
      reason,
      at: wallTimeIso(),
      released: leases.map((l) => ({ lockspace: l.lockspace, resource: l.resource, token: l.token, owner: l.owner.uuid })),
    });
    const auditKey = this.conn.keys.audit(host, audit.at);
    await this.conn.put(auditKey, JSON.stringify(audit));
    // Revoking the sessions deletes every key attached to them, host record included, at once.
    const sessions = new Set([...(found ? [found.session] : []), ...entries.map((e) => e.sessionId)]);
    for (const s of sessions) await this.conn.leaseRevoke(s);
    return { released: leases.length, audit: auditKey };
  }

  /** Whether a migration not yet ended names `host` as its source or destination. */
  private async inOpenMigration(host: string): Promise<boolean> {
    const open = (await new MigrationStore(this.conn).list()).filter((m) => !isClosedPhase(m.record.phase));
    return open.some((m) => m.record.source === host || m.record.destination === host);
  }
}
