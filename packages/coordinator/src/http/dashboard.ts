import {
  CLUSTER_LEASE_COLUMNS,
  clusterLeaseRows,
  compareByStart,
  formatMs,
  HOST_COLUMNS,
  hostRows,
  isSettled,
  MIGRATION_COLUMNS,
  migrationRows,
  toErrorBody,
  VM_COLUMNS,
  vmRows,
  wallTimeIso,
  type ClusterLease,
  type ErrorBody,
  type HostedVm,
  type HostView,
  type MigrationRecord,
  type TableRow,
} from '@baton/core';
import type { Coordinator, ReplicaInfo } from '../coordinator.js';
import { handoffWindowMs } from './metrics.js';

/** One part of the page: read on its own, so a part that fails (etcd down, an agent silent) leaves the others shown. */
export type Part<T> = { ok: true; value: T } | { ok: false; error: ErrorBody };

/** Everything the dashboard shows, as read by one replica at one moment. */
export interface DashboardView {
  cluster: string;
  replica: { id: string; leader: boolean };
  generatedAt: string;
  /** Seconds between reloads; 0: the page does not reload. */
  refreshSeconds: number;
  replicas: Part<ReplicaInfo[]>;
  hosts: Part<HostView[]>;
  migrations: Part<MigrationRecord[]>;
  vms: Part<HostedVm[]>;
  leases: Part<ClusterLease[]>;
}

/** Settled migrations shown, newest first (the rest are in `GET /v1/migrations`). */
export const RECENT_MIGRATIONS = 20;

/** How often the page reloads unless `?refresh=` says otherwise. */
export const DEFAULT_REFRESH_SECONDS = 2;

function part<T>(reading: Promise<T>): Promise<Part<T>> {
  return reading.then(
    (value) => ({ ok: true, value }),
    (err: unknown) => ({ ok: false, error: toErrorBody(err) }),
  );
}

export async function readDashboard(c: Coordinator, refreshSeconds: number): Promise<DashboardView> {
  const [replicas, hosts, migrations, vms, leases] = await Promise.all([
    part(c.replicas()),
    part(c.view.hosts()),
    part(c.store.list().then((all) => all.map((s) => s.record))),
    part(c.vms()),
    part(c.view.leases()),
  ]);
  return { cluster: c.cluster, replica: { id: c.id, leader: c.isLeader }, generatedAt: wallTimeIso(), refreshSeconds, replicas, hosts, migrations, vms, leases };
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Every name on the page comes from a user or an agent (a VM may be called anything): text only, never markup. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => ESCAPES[ch]!);
}

const cell = (value: string | number | undefined): string => (value === undefined ? '-' : escapeHtml(String(value)));

/** A table whose first column may link each row somewhere (a migration to its record). */
function table(id: string, columns: readonly string[], rows: readonly TableRow[], href?: (row: TableRow) => string): string {
  const head = columns.map((c) => `<th>${escapeHtml(c)}</th>`).join('');
  const body = rows
    .map((row) => {
      const cells = columns.map((c, i) => {
        const text = cell(row[c]);
        return `<td>${i === 0 && href ? `<a href="${escapeHtml(href(row))}">${text}</a>` : text}</td>`;
      });
      return `<tr>${cells.join('')}</tr>`;
    })
    .join('\n');
  const empty = rows.length === 0 ? '\n<p class="empty">none</p>' : '';
  return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>${empty}`;
}

function section<T>(title: string, data: Part<T>, render: (value: T) => { count: number; html: string }): string {
  if (!data.ok) return `<section><h2>${escapeHtml(title)}</h2>\n<p class="error">unavailable: ${escapeHtml(data.error.code)}: ${escapeHtml(data.error.message)}</p></section>`;
  const { count, html } = render(data.value);
  return `<section><h2>${escapeHtml(title)} <small>(${count})</small></h2>\n${html}</section>`;
}

const migrationLink = (row: TableRow): string => `/v1/migrations/${encodeURIComponent(String(row['id']))}`;

function replicaSection(view: DashboardView): string {
  return section('Coordinator replicas', view.replicas, (replicas) => ({
    count: replicas.length,
    html: table(
      'replicas',
      ['replica', 'url', 'role'],
      replicas.map((r, i) => ({ replica: r.id, url: r.url, role: i === 0 ? 'leader' : 'follower' })),
    ),
  }));
}

function migrationSections(view: DashboardView): string {
  const open = section('Migrations in flight', view.migrations, (all) => {
    const rows = all.filter((r) => !isSettled(r)).sort(compareByStart);
    return { count: rows.length, html: table('open-migrations', MIGRATION_COLUMNS, migrationRows(rows), migrationLink) };
  });
  const recent = section(`Recent migrations`, view.migrations, (all) => {
    const settled = all.filter(isSettled).sort((a, b) => compareByStart(b, a)).slice(0, RECENT_MIGRATIONS);
    const rows = migrationRows(settled).map((row, i) => {
      const window = handoffWindowMs(settled[i]!);
      return { ...row, 'handoff window': window === undefined ? undefined : formatMs(window) };
    });
    return { count: rows.length, html: table('recent-migrations', [...MIGRATION_COLUMNS, 'handoff window'], rows, migrationLink) };
  });
  return `${open}\n${recent}`;
}

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2430; }
h1 { font-size: 1.4em; margin: 0 } h1 small, h2 small { color: #667; font-weight: normal }
h2 { font-size: 1.1em; margin: 1.6em 0 .4em }
header p { margin: .3em 0; color: #445 }
table { border-collapse: collapse; }
th, td { padding: .25em .8em .25em 0; text-align: left; border-bottom: 1px solid #dde; font-variant-numeric: tabular-nums; }
th { font-size: .8em; text-transform: uppercase; color: #667; }
.empty { color: #889; } .error { color: #a11; font-weight: bold; }
footer { margin-top: 2em; color: #667; }
`;

const API_LINKS = ['/v1/status', '/v1/hosts', '/v1/vms', '/v1/leases', '/v1/migrations', '/metrics'];

/** The dashboard as one HTML document with no script: tables rendered here, reloaded by the browser every `refreshSeconds`. */
export function renderDashboard(view: DashboardView): string {
  const leader = view.replicas.ok ? view.replicas.value[0] : undefined;
  const leaderText = leader === undefined ? 'no leader (an election is under way)' : `leader ${escapeHtml(leader.id)} at <a href="${escapeHtml(leader.url)}/">${escapeHtml(leader.url)}</a>`;
  const refresh =
    view.refreshSeconds > 0
      ? `reloads every ${view.refreshSeconds} s (<a href="?refresh=0">stop</a>)`
      : `does not reload (<a href="?">reload every ${DEFAULT_REFRESH_SECONDS} s</a>)`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Baton · ${escapeHtml(view.cluster)}</title>
${view.refreshSeconds > 0 ? `<meta http-equiv="refresh" content="${view.refreshSeconds}">\n` : ''}<style>${STYLE}</style>
</head><body>
<header><h1>Baton <small>cluster ${escapeHtml(view.cluster)}</small></h1>
<p id="answered">answered by ${escapeHtml(view.replica.id)} (${view.replica.leader ? 'leader' : 'follower'}) · ${leaderText}</p>
<p>read at <time>${escapeHtml(view.generatedAt)}</time> · ${refresh}</p></header>
${replicaSection(view)}
${section('Hosts', view.hosts, (hosts) => ({ count: hosts.length, html: table('hosts', HOST_COLUMNS, hostRows(hosts)) }))}
${migrationSections(view)}
${section('VMs', view.vms, (vms) => ({ count: vms.length, html: table('vms', VM_COLUMNS, vmRows(vms)) }))}
${section('Leases', view.leases, (leases) => ({ count: leases.length, html: table('leases', CLUSTER_LEASE_COLUMNS, clusterLeaseRows(leases)) }))}
<footer>The same as JSON: ${API_LINKS.map((p) => `<a href="${p}">${p}</a>`).join(' · ')}</footer>
</body></html>
`;
}
