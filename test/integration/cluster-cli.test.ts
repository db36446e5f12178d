import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FenceAuditSchema, type ClusterLease, type Grant, type HostView } from '@baton/core';
import { EtcdConfigSchema, EtcdConnection } from '@baton/etcd';
import { runCli, type CliResult } from '../support/agent-io.js';
import { AgentProcess, EtcdServer, ManagedProcess, SharedStorage, TwoHosts, waitFor } from '../support/index.js';

/**
 * `baton locks --cluster`, `baton hosts` and `baton host fence` as an operator runs them, against
 * two real agents on one real etcd. Each host has its own lock directory: only etcd stands
 * between them.
 */
let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});

/**
 * 6 s: while a host runs, etcd reports its last keepalive 1–2 s ago (keepalives every 2 s; etcd's
 * remaining TTL is whole seconds, rounded down), well under the 3 s (TTL/2) after which a fence
 * declaration is accepted; after a crash the declaration has the last 3–4 s of the TTL to land.
 */
const TTL_SECONDS = 6;
const WARN_SECONDS = TTL_SECONDS / 2;


const why = (r: CliResult): string => `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

/** Run `baton` and expect success. */
async function ok(args: string[]): Promise<CliResult> {
  const r = await runCli(args);
  expect(r.status, why(r)).toBe(0);
  return r;
}

/** A table printed by the CLI: its header and rows, cells split where printTable pads (two spaces or more). */
function table(stdout: string): { header: string[]; rows: string[][] } {
  const [header, ...rows] = stdout.trimEnd().split('\n').map((l) => l.trim().split(/\s{2,}/));
  return { header: header!, rows };
}

interface Owner {
  uuid: string;
  name: string;
  vm: ManagedProcess;
}

/** A VM stand-in: a sleeping process, the pid its owner is bound to. */
async function owner(name: string): Promise<Owner> {
  return { uuid: randomUUID(), name, vm: await ManagedProcess.spawn({ name, command: 'sleep', args: ['120'] }) };
}

/** `baton lock acquire` on `agent` for `o`, as a libvirt hook runs it. */
async function acquire(agent: AgentProcess, o: Owner, disks: string[], opts: { shared?: boolean } = {}): Promise<Grant[]> {
  const r = await ok([
    'lock', 'acquire', '--socket', agent.socketPath, '--owner', o.uuid, '--name', o.name, '--pid', String(o.vm.pid), '--json',
    ...(opts.shared ? ['--shared'] : []), ...disks,
  ]);
  return (JSON.parse(r.stdout) as { grants: Grant[] }).grants;
}

async function clusterLeases(agent: AgentProcess): Promise<ClusterLease[]> {
  return (JSON.parse((await ok(['locks', '--cluster', '--socket', agent.socketPath, '--json'])).stdout) as { leases: ClusterLease[] }).leases;
}

async function hostViews(agent: AgentProcess): Promise<HostView[]> {
  return (JSON.parse((await ok(['hosts', '--socket', agent.socketPath, '--json'])).stdout) as { hosts: HostView[] }).hosts;
}

/** The table rows `baton locks --cluster` prints for these leases: by resource, then host. */
function leaseRows(leases: { resource: string; host: string; mode: string; owner: string; token: number; since: string }[]): string[][] {
  return [...leases]
    .sort((a, b) => a.resource.localeCompare(b.resource) || a.host.localeCompare(b.host))
    .map((l) => [l.resource, 'images', l.mode, l.host, l.owner, String(l.token), l.since]);
}

describe('baton CLI on a cluster', () => {
  it('shows every host’s leases (baton locks --cluster) and the hosts (baton hosts), as tables and JSON', async () => {
    await using twoHosts = await TwoHosts.start(etcd.endpoints, TTL_SECONDS);
    const { a, b, storage } = twoHosts;
    const vmA = await owner('vm-a');
    await using _vmA = vmA.vm;
    const vmB = await owner('vm-b');
    await using _vmB = vmB.vm;
    const [disk1, disk2, disk3] = [storage.image('disk1.img'), storage.image('disk2.img'), storage.image('shared.img')];

    const [g1] = await acquire(a, vmA, [disk1]);
    const [g2] = await acquire(b, vmB, [disk2]);
    const [g3a] = await acquire(a, vmA, [disk3], { shared: true });
    const [g3b] = await acquire(b, vmB, [disk3], { shared: true });
    const expected = [
      { resource: disk1, host: 'host-a', mode: 'exclusive', owner: vmA, grant: g1! },
      { resource: disk2, host: 'host-b', mode: 'exclusive', owner: vmB, grant: g2! },
      { resource: disk3, host: 'host-a', mode: 'shared', owner: vmA, grant: g3a! },
      { resource: disk3, host: 'host-b', mode: 'shared', owner: vmB, grant: g3b! },
    ];

    // JSON: the agent's answer as it is, the token of each lease the token its grant carried.
    const hosts = await hostViews(a);
    const sessionOf = (h: string): string => hosts.find((v) => v.host === h)!.session;
    const leases = await clusterLeases(b);
    expect(leases).toHaveLength(4);
    expect(leases).toEqual(
      expect.arrayContaining(
        expected.map((e) => ({
          lockspace: 'images',
          resource: e.resource,
          mode: e.mode,
          host: e.host,
          // The policy the owner registered with (the default): a VM's, kept with its leases.
          owner: { uuid: e.owner.uuid, name: e.owner.name, onLeaseLoss: { policy: 'kill' } },
          token: e.grant.token,
          // Written into etcd by the grant's transaction, a few ms before the local lock's own `since`.
          since: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
          session: sessionOf(e.host),
        })),
      ),
    );

    // The table, from either host: the cluster view is etcd's, not the local agent's.
    for (const agent of [a, b]) {
      const t = table((await ok(['locks', '--cluster', '--socket', agent.socketPath])).stdout);
      expect(t.header).toEqual(['RESOURCE', 'LOCKSPACE', 'MODE', 'HOST', 'OWNER', 'TOKEN', 'SINCE']);
      expect(t.rows).toEqual(leaseRows(leases.map((l) => ({ ...l, owner: l.owner.name }))));
    }

    // Without --cluster, `baton locks` stays this host's own table (lock paths and pids).
    const local = table((await ok(['locks', '--socket', a.socketPath])).stdout);
    expect(local.header).toEqual(['RESOURCE', 'LOCKSPACE', 'MODE', 'OWNER', 'PID', 'TOKEN', 'SINCE', 'PATH']);
    expect(local.rows.map((r) => r[0]).sort()).toEqual([disk1, disk3].sort());

    // baton hosts --json: one record per host, with its live session.
    const hello = { a: await (await a.client()).request('hello'), b: await (await b.client()).request('hello') };
    expect(hosts.map((h) => h.host).sort()).toEqual(['host-a', 'host-b']);
    for (const [h, info] of [['host-a', hello.a], ['host-b', hello.b]] as const) {
      const view = hosts.find((v) => v.host === h)!;
      expect(view).toMatchObject({ host: h, address: `127.0.0.1:${info.httpPort}`, version: info.version, pid: info.pid, lockspaces: ['images'], ttlSeconds: TTL_SECONDS });
      expect(view.session).toMatch(/^[0-9a-f]+$/);
      expect(view.ttlLeftSeconds).toBeGreaterThan(0);
      expect(view.ttlLeftSeconds).toBeLessThanOrEqual(TTL_SECONDS);
      expect(view.lastKeepaliveAgoSeconds).toBeGreaterThanOrEqual(0);
      expect(view.lastKeepaliveAgoSeconds).toBeLessThanOrEqual(WARN_SECONDS);
    }
    expect(sessionOf('host-a')).not.toBe(sessionOf('host-b'));

    // baton hosts: the table.
    const t = table((await ok(['hosts', '--socket', b.socketPath])).stdout);
    expect(t.header).toEqual(['HOST', 'ADDRESS', 'SESSION', 'TTL LEFT', 'LAST KEEPALIVE', 'LOCKSPACES', 'VERSION']);
    expect(t.rows.map((r) => r[0])).toEqual(['host-a', 'host-b']);
    for (const [i, info] of [hello.a, hello.b].entries()) {
      const row = t.rows[i]!;
      expect(row).toHaveLength(7);
      expect(row[1]).toBe(`127.0.0.1:${info.httpPort}`);
      expect(row[2]).toBe(sessionOf(info.host));
      expect(row[3]).toMatch(/^[1-9]\d*s$/);
      expect(row[4]).toMatch(/^\d+s ago$/);
      expect(row[5]).toBe('images');
      expect(row[6]).toBe(info.version);
    }
  });

  it('fences a dead host only with --i-have-fenced, never while it renews (HOST_ALIVE), and audits the release in etcd', async () => {
    await using twoHosts = await TwoHosts.start(etcd.endpoints, TTL_SECONDS);
    const { a, b, storage, cluster } = twoHosts;
    const vmA = await owner('vm-a');
    await using _vmA = vmA.vm;
    const vmB = await owner('vm-b');
    await using _vmB = vmB.vm;
    const [disk1, disk2, disk3] = [storage.image('disk1.img'), storage.image('disk2.img'), storage.image('shared.img')];
    await acquire(a, vmA, [disk1]);
    await acquire(a, vmA, [disk3], { shared: true });
    const heldByB = [...(await acquire(b, vmB, [disk2])), ...(await acquire(b, vmB, [disk3], { shared: true }))];
    const before = await clusterLeases(a);
    const leasesOfB = before.filter((l) => l.host === 'host-b');
    expect(leasesOfB).toHaveLength(2);
    const fence = (...extra: string[]): Promise<CliResult> => runCli(['host', 'fence', 'host-b', '--socket', a.socketPath, ...extra]);
    const reason = 'host-b powered off through its BMC (ticket 4711)';

    // Without the explicit flag: refused before anything is asked of the cluster.
    const unflagged = await fence('--reason', reason);
    expect(unflagged.status, why(unflagged)).toBe(2);
    expect(unflagged.stderr).toMatch(/^error INVALID_REQUEST: refusing to declare host-b fenced without --i-have-fenced/m);
    expect(unflagged.stdout).toBe('');
    const unflaggedJson = await fence('--reason', reason, '--json');
    expect(unflaggedJson.status, why(unflaggedJson)).toBe(2);
    expect(JSON.parse(unflaggedJson.stdout)).toMatchObject({ error: { code: 'INVALID_REQUEST', details: { host: 'host-b', missing: '--i-have-fenced' } } });
    // Nor without a reason for the audit record, nor for the host the command runs on.
    const noReason = await fence('--i-have-fenced');
    expect(noReason.status, why(noReason)).toBe(2);
    expect(noReason.stderr).toMatch(/^error INVALID_REQUEST: a --reason is required/m);
    const self = await runCli(['host', 'fence', 'host-a', '--socket', a.socketPath, '--i-have-fenced', '--reason', reason]);
    expect(self.status, why(self)).toBe(2);
    expect(self.stderr).toMatch(/^error INVALID_REQUEST: a host cannot declare itself fenced/m);

    // host-b's agent runs and renews its session: it is alive, whatever the operator believes.
    const alive = await fence('--i-have-fenced', '--reason', reason);
    expect(alive.status, why(alive)).toBe(3);
    expect(alive.stderr).toMatch(/^error HOST_ALIVE: host host-b renewed its session/m);
    const aliveJson = await fence('--i-have-fenced', '--reason', reason, '--json');
    expect(aliveJson.status, why(aliveJson)).toBe(3);
    expect(JSON.parse(aliveJson.stdout)).toMatchObject({ error: { code: 'HOST_ALIVE', details: { host: 'host-b' } } });
    expect(await clusterLeases(a)).toEqual(before);

    // host-b's agent dies (its VM keeps running, as after an OOM kill); its session stops renewing.
    await b.crash();
    expect(vmB.vm.running).toBe(true);
    const stale = await waitFor(
      async () => {
        const view = (await hostViews(a)).find((h) => h.host === 'host-b');
        if (view === undefined) throw new Error('host-b’s session expired before the declaration could be made');
        return view.lastKeepaliveAgoSeconds >= WARN_SECONDS ? view : false;
      },
      { what: `host-b’s last keepalive to be ${WARN_SECONDS} s old`, deadlineMs: TTL_SECONDS * 1000, intervalMs: 50, attemptTimeoutMs: 5_000 },
    );
    expect(stale.ttlLeftSeconds).toBeGreaterThanOrEqual(0);

    const fenced = await fence('--i-have-fenced', '--reason', reason);
    expect(fenced.status, why(fenced)).toBe(0);
    const lines = fenced.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('host host-b declared dead and fenced: 2 lease(s) released');
    const auditKey = /^audit record: (\S+)$/.exec(lines[1]!)?.[1];
    expect(auditKey).toMatch(new RegExp(`^/baton/${cluster}/audit/fence/host-b/`));
    expect(lines[2]).toBe('leases host-b held just before the declaration:');
    expect(table(lines.slice(3).join('\n')).rows).toEqual(
      leaseRows(leasesOfB.map((l) => ({ resource: l.resource, host: l.host, mode: l.mode, owner: l.owner.name, token: l.token, since: l.since }))),
    );

    // The dead host's leases are gone at once, well before its session would have expired; host-a's stay.
    expect(await clusterLeases(a)).toEqual(before.filter((l) => l.host === 'host-a'));
    expect((await hostViews(a)).map((h) => h.host)).toEqual(['host-a']);
    const again = await fence('--i-have-fenced', '--reason', reason, '--json');
    expect(again.status, why(again)).toBe(2);
    expect(JSON.parse(again.stdout)).toMatchObject({ error: { code: 'INVALID_REQUEST', details: { host: 'host-b' } } });
    // host-b's exclusive disk is grantable to another host now, with a larger token.
    const vmA2 = await owner('vm-a2');
    await using _vmA2 = vmA2.vm;
    const [regrant] = await acquire(a, vmA2, [disk2]);
    expect(regrant!.token).toBeGreaterThan(heldByB[0]!.token);

    // The audit record, read from etcd itself: who, why, and exactly what was released.
    await using conn = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: etcd.endpoints, cluster }));
    const res = await conn.range(`/baton/${cluster}/audit/fence/host-b/`, { prefix: true });
    expect(res.kvs.map((kv) => kv.key.toString())).toEqual([auditKey]);
    expect(res.kvs[0]!.lease).toBe('0');
    const audit = FenceAuditSchema.parse(JSON.parse(res.kvs[0]!.value.toString()));
    expect(audit).toMatchObject({ v: 1, host: 'host-b', reason, by: { host: 'host-a', uid: process.getuid!() } });
    expect(auditKey).toBe(`/baton/${cluster}/audit/fence/host-b/${audit.at}`);
    const byToken = (x: { token: number }, y: { token: number }): number => x.token - y.token;
    expect([...audit.released].sort(byToken)).toEqual(
      leasesOfB.map((l) => ({ lockspace: 'images', resource: l.resource, token: l.token, owner: vmB.uuid })).sort(byToken),
    );
    expect(audit.released.map((r) => r.token).sort((x, y) => x - y)).toEqual(heldByB.map((g) => g.token).sort((x, y) => x - y));
  });

  it('answers INVALID_REQUEST (exit 2) for the cluster commands on an agent with no cluster', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    for (const args of [['locks', '--cluster'], ['hosts'], ['host', 'fence', 'host-b', '--i-have-fenced', '--reason', 'x']]) {
      const r = await runCli([...args, '--socket', agent.socketPath]);
      expect(r.status, why(r)).toBe(2);
      expect(r.stderr).toMatch(/^error INVALID_REQUEST: this agent has no cluster configured/m);
      const json = await runCli([...args, '--socket', agent.socketPath, '--json']);
      expect(json.status, why(json)).toBe(2);
      expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'INVALID_REQUEST' } });
    }
  });
});
