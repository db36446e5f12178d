import { describe, expect, it } from 'vitest';
import { newMigration, type HostedVm, type MigrationRecord } from '@baton/core';
import { escapeHtml, RECENT_MIGRATIONS, renderDashboard, type DashboardView } from '../src/http/dashboard.js';

const HOSTILE = `<script>alert("x")</script>&'`;

function migration(n: number, phase: MigrationRecord['phase'], name = `vm${n}`): MigrationRecord {
  const begun = newMigration({ id: `m-${n}`, vm: { uuid: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`, name }, source: 'h1', destination: 'h2', resources: [{ name: `/images/${n}.img`, lockspace: 'images', mode: 'exclusive' }] }, 1_000 * n);
  const startedAt = `2026-11-22T10:00:${String(n % 60).padStart(2, '0')}.000Z`;
  if (phase === 'begun') return { ...begun, startedAt };
  // A settled one: sent at +100 ms, the destination running (confirming) 7.5 ms later.
  const at = 1_000 * n;
  return { ...begun, startedAt, phase, timeline: [...begun.timeline, { phase: 'sent', atMs: at + 100 }, { phase: 'confirming', atMs: at + 107.5 }, { phase, atMs: at + 120 }] };
}

function view(overrides: Partial<DashboardView> = {}): DashboardView {
  const vm: HostedVm = { uuid: '00000000-0000-4000-8000-000000000001', name: HOSTILE, pid: 42, state: 'running', seq: 7, host: 'h1', locks: [] };
  return {
    cluster: 'prod',
    replica: { id: 'coord-2', leader: false },
    generatedAt: '2026-11-22T10:01:00.000Z',
    refreshSeconds: 2,
    replicas: { ok: true, value: [{ id: 'coord-1', url: 'http://127.0.0.1:9472' }, { id: 'coord-2', url: 'http://127.0.0.1:9473' }] },
    hosts: { ok: true, value: [] },
    migrations: { ok: true, value: [migration(1, 'begun', HOSTILE)] },
    vms: { ok: true, value: [vm] },
    leases: { ok: true, value: [] },
    ...overrides,
  };
}

describe('the coordinator dashboard page', () => {
  it('shows every name as text: a VM called with markup is escaped wherever it appears, and the page has no script', () => {
    const html = renderDashboard(view());
    expect(html).not.toContain('<script');
    expect(html).not.toContain(HOSTILE);
    // The VM table and the in-flight migration both name it.
    expect(html.split(escapeHtml(HOSTILE)).length - 1).toBe(2);
    expect(escapeHtml(HOSTILE)).toBe('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;');
  });

  it('says which replica answered and which leads, and reloads itself unless asked not to', () => {
    const html = renderDashboard(view());
    expect(html).toContain('answered by coord-2 (follower) · leader coord-1 at <a href="http://127.0.0.1:9472/">');
    expect(html).toContain('<meta http-equiv="refresh" content="2">');
    const still = renderDashboard(view({ refreshSeconds: 0 }));
    expect(still).not.toContain('http-equiv="refresh"');
    expect(still).toContain('does not reload');
  });

  it('a part that could not be read shows its error code; the others are still shown', () => {
    const html = renderDashboard(view({ leases: { ok: false, error: { code: 'UNAVAILABLE', message: `etcd <down>` } }, replicas: { ok: false, error: { code: 'UNAVAILABLE', message: 'etcd' } } }));
    expect(html).toContain('<p class="error">unavailable: UNAVAILABLE: etcd &lt;down&gt;</p>');
    expect(html).toContain('no leader (an election is under way)');
    expect(html).toContain('<table id="vms">');
    expect(html).not.toContain('<table id="leases">');
  });

  it(`lists migrations in flight oldest first, and the ${RECENT_MIGRATIONS} newest settled ones newest first with their handoff window`, () => {
    const records = [migration(3, 'begun'), migration(2, 'begun'), ...Array.from({ length: RECENT_MIGRATIONS + 5 }, (_, i) => migration(10 + i, i % 2 === 0 ? 'done' : 'aborted'))];
    const html = renderDashboard(view({ migrations: { ok: true, value: records } }));
    const ids = (table: string): string[] => [...(html.split(`<table id="${table}">`)[1]!.split('</table>')[0]!.matchAll(/<tr><td><a href="\/v1\/migrations\/([^"]+)">/g))].map((m) => m[1]!);
    expect(ids('open-migrations')).toEqual(['m-2', 'm-3']);
    const newest = Array.from({ length: RECENT_MIGRATIONS }, (_, i) => `m-${10 + RECENT_MIGRATIONS + 4 - i}`);
    expect(ids('recent-migrations')).toEqual(newest);
    expect(html).toContain('<small>(2)</small>');
    expect(html).toMatch(/<td>7\.5 ms<\/td><\/tr>/);
  });

  it('an empty list says so', () => {
    const html = renderDashboard(view());
    expect(html).toMatch(/<table id="hosts">.*?<\/table>\n<p class="empty">none<\/p>/s);
  });
});
