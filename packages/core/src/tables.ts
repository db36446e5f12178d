import type { ClusterLease, HostView } from './wire/cluster.js';
import type { HostedVm } from './wire/vm-api.js';
import type { MigrationRecord } from './migration/record.js';

/**
 * How the cluster's objects read for people, as table rows: the CLI prints them as text and the
 * coordinator's dashboard as HTML, so one object reads the same way in both. A cell left
 * undefined has no value (printed as `-`). Each list is sorted so the same view prints the same way.
 */
export type TableRow = Record<string, string | number | undefined>;

/** A duration in milliseconds, to a tenth: what timelines and handoff windows are shown in. */
export function formatMs(ms: number): string {
  return `${ms.toFixed(1)} ms`;
}

export const HOST_COLUMNS = ['host', 'address', 'session', 'ttl left', 'last keepalive', 'lockspaces', 'version'] as const;

export function hostRows(hosts: readonly HostView[]): TableRow[] {
  return [...hosts]
    .sort((a, b) => a.host.localeCompare(b.host))
    .map((h) => ({
      host: h.host,
      address: h.address === '' ? undefined : h.address,
      session: h.session,
      // etcd answers -1 for a session it no longer has (expired between the two reads).
      'ttl left': h.ttlLeftSeconds < 0 ? 'expired' : `${h.ttlLeftSeconds}s`,
      'last keepalive': h.lastKeepaliveAgoSeconds < 0 ? undefined : `${h.lastKeepaliveAgoSeconds}s ago`,
      lockspaces: h.lockspaces.join(','),
      version: h.version,
    }));
}

export const CLUSTER_LEASE_COLUMNS = ['resource', 'lockspace', 'mode', 'host', 'owner', 'token', 'since'] as const;

/** Sorted by resource, then host, then token. */
export function clusterLeaseRows(leases: readonly ClusterLease[]): TableRow[] {
  return [...leases]
    .sort((a, b) => a.resource.localeCompare(b.resource) || a.host.localeCompare(b.host) || a.token - b.token)
    .map((l) => ({ resource: l.resource, lockspace: l.lockspace, mode: l.mode, host: l.host, owner: l.owner.name, token: l.token, since: l.since }));
}

export const VM_COLUMNS = ['name', 'uuid', 'host', 'state', 'pid', 'tokens'] as const;

export function vmRows(vms: readonly HostedVm[]): TableRow[] {
  return [...vms]
    .sort((a, b) => a.name.localeCompare(b.name) || a.host.localeCompare(b.host))
    .map((v) => ({ name: v.name, uuid: v.uuid, host: v.host, state: v.state, pid: v.pid, tokens: v.locks.length === 0 ? undefined : v.locks.map((l) => l.token).join(',') }));
}

export const MIGRATION_COLUMNS = ['id', 'vm', 'source', 'destination', 'phase', 'started'] as const;

/** In the order given (callers sort: oldest first in a listing, newest first in a dashboard). */
export function migrationRows(records: readonly MigrationRecord[]): TableRow[] {
  return records.map((r) => ({
    id: r.id,
    vm: r.vm.name,
    source: r.source,
    destination: r.destination,
    phase: r.phase,
    // Wall-clock start; records from before it was kept show the leader's monotonic clock instead.
    started: r.startedAt ?? `${(r.timeline[0]!.atMs / 1000).toFixed(3)}s (monotonic)`,
  }));
}
