import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { exitCodeFor, isSettled, type HostedVm, type MigrationRecord } from '@baton/core';
import { handoffWindowMs, type CoordinatorService } from '@baton/coordinator';
import { runCli, type CliResult } from '../support/agent-io.js';
import { checkDisk, freePort, htmlTable, httpJson, MigrationCluster, migrationServers, TcpProxy, waitFor, writtenUnder } from '../support/index.js';

/**
 * `baton vm`, `baton migrate`, `baton migrations` and `baton status` as an operator runs them: the
 * real CLI as a process, against two coordinator replicas (a leader and a follower) over real
 * etcd, NATS and agent processes with sim VMs. One cluster for the file; each test starts its own
 * VMs, so the tests do not depend on each other's order.
 */
let mc: MigrationCluster;
let leader: CoordinatorService;
let follower: CoordinatorService;
const servers = migrationServers();
beforeAll(async () => {
  mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
  // The first replica is elected before the second campaigns, so which one leads is known.
  await mc.addCoordinator('coord-1');
  leader = await mc.leader();
  follower = await mc.addCoordinator('coord-2');
});
afterAll(async () => {
  await mc?.[Symbol.asyncDispose]();
});

const HANDOFF = ['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'confirming', 'done'];
const FAILED_SEND = ['begun', 'preparing', 'prepared', 'performing', 'unmarking', 'discarding', 'restoring', 'aborted'];

const why = (r: CliResult): string => `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

/** `baton ARGS --coordinator URL` (the leader's unless said). */
function cli(args: string[], via: CoordinatorService = leader): Promise<CliResult> {
  return runCli([...args, '--coordinator', via.url], { deadlineMs: 30_000 });
}

async function ok(args: string[], via?: CoordinatorService): Promise<CliResult> {
  const r = await cli(args, via);
  expect(r.status, why(r)).toBe(0);
  return r;
}

/** A table printed by the CLI: cells split where printTable pads (two spaces or more). */
function table(lines: string[]): { header: string[]; rows: string[][] } {
  const [header, ...rows] = lines.map((l) => l.trim().split(/\s{2,}/));
  return { header: header!, rows };
}

/** The lines of the timeline table `migrate` and `migrations ID` print, up to the handoff window line. */
function timelineTable(stdout: string): { header: string[]; rows: string[][] } {
  const lines = stdout.split('\n');
  const start = lines.findIndex((l) => l.startsWith('PHASE'));
  const end = lines.findIndex((l) => l.startsWith('handoff window:'));
  expect(start, stdout).toBeGreaterThanOrEqual(0);
  return table(lines.slice(start, end));
}

async function record(id: string): Promise<MigrationRecord> {
  const res = await httpJson<MigrationRecord>(`${leader.url}/v1/migrations/${id}`);
  expect(res.status).toBe(200);
  return res.body;
}

/** Wait for a migration to settle; a timeout names the phase it stayed in and its timeline. */
function settled(id: string): Promise<MigrationRecord> {
  return waitFor(
    async () => {
      const r = await record(id);
      if (isSettled(r)) return r;
      throw new Error(`still ${r.phase}; timeline ${r.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`).join(' → ')}`);
    },
    { what: `migration ${id} to end`, deadlineMs: 20_000 },
  );
}

describe('baton CLI for VMs and live migration', () => {
  it('vm start runs a VM on its host, and vm list shows it there (table and JSON)', async () => {
    const disk = mc.disk('cli-web1.img');
    const started = await ok(['vm', 'start', 'cli-web1', '--host', 'host-a', '--disk', disk, '--on-lease-loss', 'pause', '--json']);
    const vm = JSON.parse(started.stdout) as HostedVm;
    expect(vm).toMatchObject({ name: 'cli-web1', host: 'host-a', state: 'running' });
    expect(vm.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(vm.locks.map((l) => [l.resource, l.mode])).toEqual([[disk, 'exclusive']]);

    const [listedText, jsonText] = await Promise.all([ok(['vm', 'list']), ok(['vm', 'list', '--json'], follower)]);
    const listed = table(listedText.stdout.trimEnd().split('\n'));
    expect(listed.header).toEqual(['NAME', 'UUID', 'HOST', 'STATE', 'PID', 'TOKENS']);
    expect(listed.rows.filter((r) => r[0] === 'cli-web1')).toEqual([['cli-web1', vm.uuid, 'host-a', 'running', String(vm.pid), String(vm.locks[0]!.token)]]);
    const json = JSON.parse(jsonText.stdout) as { vms: HostedVm[] };
    // seq is the guest's write counter: it moves on between the two answers.
    expect(json.vms.filter((v) => v.uuid === vm.uuid)).toEqual([{ ...vm, seq: expect.any(Number) }]);
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
  });

  it('migrate --json, through a follower replica, ends with the record done and the VM running on the destination', async () => {
    const vm = await mc.startVm('host-a', 'cli-web2', ['cli-web2.img']);
    const r = await ok(['migrate', 'cli-web2', '--to', 'host-b', '--json'], follower);
    const done = JSON.parse(r.stdout) as MigrationRecord;
    expect(done).toMatchObject({ phase: 'done', vm: { uuid: vm.uuid, name: 'cli-web2' }, source: 'host-a', destination: 'host-b' });
    expect(done.timeline.map((e) => e.phase)).toEqual(HANDOFF);
    expect(await record(done.id)).toEqual(done);
    const after = JSON.parse((await ok(['vm', 'list', '--json'])).stdout) as { vms: HostedVm[] };
    expect(after.vms.filter((v) => v.uuid === vm.uuid).map((v) => [v.host, v.state, v.locks.map((l) => l.token)])).toEqual([['host-b', 'running', [done.tokens.commit]]]);
  });

  it('migrate shows every phase as it is reached, in order, then the timeline and the handoff window', async () => {
    const vm = await mc.startVm('host-b', 'cli-web3', ['cli-web3.img']);
    const r = await ok(['migrate', vm.uuid, '--to', 'host-a']);
    const lines = r.stdout.split('\n');
    const id = /^migration (\S+): VM cli-web3 \(([0-9a-f-]+)\) host-b → host-a$/.exec(lines[0]!);
    expect(id?.[2], r.stdout).toBe(vm.uuid);
    const progress = lines.slice(1).map((l) => /^ {2}(\S+) +\+(\d+\.\d) ms$/.exec(l)).filter((m) => m !== null);
    expect(progress.map((m) => m[1])).toEqual(HANDOFF);
    const since = progress.map((m) => Number(m[2]));
    expect(since[0]).toBe(0);
    expect([...since].sort((a, b) => a - b)).toEqual(since);

    const done = await record(id![1]!);
    const t = timelineTable(r.stdout);
    expect(t.header).toEqual(['PHASE', 'AT', 'STEP', 'ERROR']);
    expect(t.rows.map((row) => [row[0], row[3]])).toEqual(HANDOFF.map((p) => [p, '-']));
    expect(t.rows.map((row) => row[1])).toEqual(done.timeline.map((e) => `+${(e.atMs - done.timeline[0]!.atMs).toFixed(1)} ms`));
    const window = handoffWindowMs(done)!;
    expect(window).toBeGreaterThan(0);
    expect(lines).toContain(`handoff window: ${window.toFixed(1)} ms (sent → confirming: the commit transaction and the destination's resume)`);
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('VM cli-web3 runs on host-a');
    expect(r.stderr).toBe('');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
  });

  it('on a terminal, migrate draws one bar, redrawn in place from 0/7 begun to 7/7 done, then the timeline', async () => {
    const vm = await mc.startVm('host-a', 'cli-web4', ['cli-web4.img']);
    const r = await runCli(['migrate', 'cli-web4', '--to', 'host-b', '--coordinator', leader.url], { deadlineMs: 30_000, tty: true });
    expect(r.status, why(r)).toBe(0);
    const lines = r.stdout.split('\r\n');
    expect(lines[0]).toMatch(/^migration \S+: VM cli-web4 \(.+\) host-a → host-b$/);
    // The bar's line: every drawing starts by returning to column 0 and clearing the line.
    const frames = lines[1]!.split('\r\x1b[2K');
    expect(frames[0], 'nothing before the first drawing').toBe('');
    const drawn = frames.slice(1).map((f) => {
      const m = /^\[([█░]{24})\] (\d)\/7 (\S+) +\+\d+\.\d ms$/.exec(f);
      expect(m, JSON.stringify(f)).not.toBeNull();
      return { filled: m![1]!.indexOf('░') < 0 ? 24 : m![1]!.indexOf('░'), taken: Number(m![2]), phase: m![3]! };
    });
    expect(drawn[0]).toEqual({ filled: 0, taken: 0, phase: 'begun' });
    expect(drawn.at(-1)).toEqual({ filled: 24, taken: 7, phase: 'done' });
    for (const [i, d] of drawn.entries()) {
      expect(d.phase, 'the phase the steps taken lead to').toBe(HANDOFF[d.taken]);
      expect(d.filled).toBe(Math.round((d.taken / 7) * 24));
      if (i > 0) expect(d.taken, 'the bar only moves on').toBeGreaterThan(drawn[i - 1]!.taken);
    }
    // No line per phase on a terminal; the timeline table follows the bar.
    expect(lines.filter((l) => /^ {2}\S+ +\+\d+\.\d ms$/.test(l))).toEqual([]);
    expect(timelineTable(lines.join('\n')).rows.map((row) => row[0])).toEqual(HANDOFF);
    expect(lines.filter((l) => l !== '').at(-1)).toBe('VM cli-web4 runs on host-b');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-b': 'running' });
  });

  it('a failed send: migrate exits with IO_ERROR’s status and prints the aborted timeline; migrations lists the aborted and the later done one', async () => {
    const vm = await mc.startVm('host-a', 'cli-db1', ['cli-db1.img']);
    const driver = mc.driver('host-a');

    await driver.inject(vm.uuid, { failSends: 1 });
    const failed = await cli(['migrate', 'cli-db1', '--to', 'host-b']);
    expect(failed.status, why(failed)).toBe(exitCodeFor('IO_ERROR'));
    const firstId = /^migration (\S+): /.exec(failed.stdout)?.[1];
    expect(failed.stderr).toMatch(/^error IO_ERROR: migration \S+ aborted: perform failed with IO_ERROR; VM cli-db1 stays on host-a$/m);
    const t = timelineTable(failed.stdout);
    expect(t.rows.map((row) => [row[0], row[3]])).toEqual(FAILED_SEND.map((p) => [p, p === 'unmarking' ? 'IO_ERROR' : '-']));
    expect(failed.stdout).toMatch(/^ {2}unmarking +\+\d+\.\d ms {2}IO_ERROR$/m);
    expect(failed.stdout).toContain('handoff window: none (the destination never took over)\n');
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });

    // --json: the aborted record is the output, the exit status still the failure's.
    await driver.inject(vm.uuid, { failSends: 1 });
    const failedJson = await cli(['migrate', 'cli-db1', '--to', 'host-b', '--json']);
    expect(failedJson.status, why(failedJson)).toBe(exitCodeFor('IO_ERROR'));
    const aborted = JSON.parse(failedJson.stdout) as MigrationRecord;
    expect(aborted.phase).toBe('aborted');
    expect(aborted.timeline.map((e) => [e.phase, e.error])).toEqual(FAILED_SEND.map((p) => [p, p === 'unmarking' ? 'IO_ERROR' : undefined]));

    const done = JSON.parse((await ok(['migrate', 'cli-db1', '--to', 'host-b', '--json'])).stdout) as MigrationRecord;
    expect(done.phase).toBe('done');

    // The list: every record on file, oldest first, the same from either replica.
    const all = (await httpJson<{ migrations: MigrationRecord[] }>(`${leader.url}/v1/migrations`)).body.migrations;
    const [listText, listJson, one] = await Promise.all([ok(['migrations'], follower), ok(['migrations', '--json']), ok(['migrations', aborted.id])]);
    const list = table(listText.stdout.trimEnd().split('\n'));
    expect(list.header).toEqual(['ID', 'VM', 'SOURCE', 'DESTINATION', 'PHASE', 'STARTED']);
    expect(list.rows.map((row) => row.slice(0, 5))).toEqual(all.map((m) => [m.id, m.vm.name, m.source, m.destination, m.phase]));
    expect(list.rows.filter((row) => row[1] === 'cli-db1').map((row) => [row[0], row[4]])).toEqual([
      [firstId, 'aborted'],
      [aborted.id, 'aborted'],
      [done.id, 'done'],
    ]);
    expect(JSON.parse(listJson.stdout)).toEqual({ migrations: all });

    // One record: its outcome, why it aborted, and its timeline.
    expect(one.stdout).toContain(`migration ${aborted.id}: VM cli-db1 (${vm.uuid}) host-a → host-b\nphase: aborted\n`);
    expect(one.stdout).toContain(`cause: migration ${aborted.id} aborted: perform failed with IO_ERROR; VM cli-db1 stays on host-a\n`);
    expect(timelineTable(one.stdout).rows.map((row) => row[0])).toEqual(FAILED_SEND);
  });

  it('serves liveness, readiness (saying which replica leads), the hosts and Prometheus metrics on either replica', async () => {
    await mc.startVm('host-a', 'probe-1', ['probe-1.img']);
    expect((await mc.migrate('probe-1', 'host-b')).phase).toBe('done');
    for (const [replica, leads] of [[leader, true], [follower, false]] as const) {
      expect(await httpJson(`${replica.url}/livez`)).toEqual({ status: 200, body: { status: 'ok' } });
      expect(await httpJson(`${replica.url}/readyz`)).toEqual({ status: 200, body: { status: 'ready', leader: leads } });
      const hosts = (await httpJson<{ hosts: { host: string }[] }>(`${replica.url}/v1/hosts`)).body.hosts.map((h) => h.host);
      expect(hosts.sort()).toEqual(['host-a', 'host-b']);
      const metrics = await fetch(`${replica.url}/metrics`, { signal: AbortSignal.timeout(5_000) });
      expect(metrics.headers.get('content-type')).toMatch(/^text\/plain/);
      const text = await metrics.text();
      expect(text).toMatch(new RegExp(`^baton_coordinator_leader ${leads ? 1 : 0}$`, 'm'));
      // Only the leader drives migrations, so only it counts them.
      const done = Number(/^baton_migrations_total\{outcome="done"\} (\d+)$/m.exec(text)?.[1] ?? 0);
      expect(leads ? done >= 1 : done === 0, text).toBe(true);
    }
  });

  it('status names the leader, the replicas and the hosts, from either replica (BATON_COORDINATOR_URL when no --coordinator)', async () => {
    const [viaLeader, viaFollower, json] = await Promise.all([
      ok(['status']),
      runCli(['status'], { env: { BATON_COORDINATOR_URL: follower.url }, deadlineMs: 30_000 }),
      ok(['status', '--json'], follower),
    ]);
    expect(viaFollower.status, why(viaFollower)).toBe(0);
    for (const r of [viaLeader, viaFollower]) {
      expect(r.stdout).toMatch(new RegExp(`^leader: +coord-1 at ${leader.url}$`, 'm'));
      expect(r.stdout).toMatch(new RegExp(`^replicas: +coord-1 \\(${leader.url}\\), coord-2 \\(${follower.url}\\)$`, 'm'));
      expect(r.stdout).toMatch(/^hosts: +host-a, host-b$/m);
    }
    expect(viaLeader.stdout).toMatch(/^answered: +coord-1 \(leader\)$/m);
    expect(viaFollower.stdout).toMatch(/^answered: +coord-2 \(follower\)$/m);
    expect(JSON.parse(json.stdout)).toMatchObject({
      replica: { id: 'coord-2', leader: false },
      leader: { id: 'coord-1', url: leader.url },
      replicas: [{ id: 'coord-1' }, { id: 'coord-2' }],
      hosts: [expect.objectContaining({ host: 'host-a' }), expect.objectContaining({ host: 'host-b' })],
    });
  });

  it('vm destroy during a migration is refused with MIGRATING; once it has ended, destroy frees the VM', async () => {
    const vm = await mc.startVm('host-a', 'cli-app1', ['cli-app1.img']);
    // The destroy is sent through a paused link and let through once the migration is open: the
    // CLI's own start-up (seconds on a loaded machine) must not race the 1.5 s send that keeps it open.
    await using link = await TcpProxy.start({ target: { port: Number(new URL(leader.url).port) } });
    link.pause();
    const [refused, accepted] = await Promise.all([
      runCli(['vm', 'destroy', 'cli-app1', '--coordinator', `http://${link.hostPort}`], { deadlineMs: 30_000 }),
      (async (): Promise<MigrationRecord> => {
        await waitFor(() => link.connectionCount > 0, { what: 'baton vm destroy to connect', deadlineMs: 20_000 });
        await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_500 });
        const migration = JSON.parse((await ok(['migrate', 'cli-app1', '--to', 'host-b', '--no-wait', '--json'])).stdout) as MigrationRecord;
        link.heal();
        return migration;
      })(),
    ]);
    expect(accepted.phase).toBe('begun');
    expect(refused.status, why(refused)).toBe(exitCodeFor('MIGRATING'));
    expect(refused.stderr).toMatch(/^error MIGRATING: VM \S+ is in migration \S+; destroy it once the migration has ended$/m);

    expect((await settled(accepted.id)).phase).toBe('done');
    const destroyed = await ok(['vm', 'destroy', vm.uuid]);
    expect(destroyed.stdout).toBe(`VM ${vm.uuid} destroyed on host-b; 1 lease(s) released\n`);
    await waitFor(async () => Object.keys(await mc.copies(vm.uuid)).length === 0, { what: 'cli-app1 gone from every host', deadlineMs: 5_000 });
  });

  it('refuses a host name that is not one DNS label (a NATS wildcard would reach every host) with INVALID_REQUEST, starting nothing', async () => {
    for (const host of ['*', '>', 'host-a.vm', 'host a']) {
      const started = await httpJson<{ error: { code: string } }>(`${leader.url}/v1/vms`, { method: 'POST', body: { host, uuid: randomUUID(), name: 'bad-host', disks: [] } });
      expect([started.status, started.body.error.code], host).toEqual([400, 'INVALID_REQUEST']);
      const migrated = await httpJson<{ error: { code: string } }>(`${leader.url}/v1/migrations`, { method: 'POST', body: { vm: 'cli-web1', to: host } });
      expect([migrated.status, migrated.body.error.code], host).toEqual([400, 'INVALID_REQUEST']);
    }
    const { vms } = (await httpJson<{ vms: HostedVm[] }>(`${leader.url}/v1/vms`)).body;
    expect(vms.filter((v) => v.name === 'bad-host')).toEqual([]);
  });

  it('refuses to start a VM whose uuid is on another host already (ALREADY_REGISTERED): one copy runs', async () => {
    const uuid = randomUUID();
    const first = await httpJson<HostedVm>(`${leader.url}/v1/vms`, { method: 'POST', body: { host: 'host-a', uuid, name: 'dup-1', disks: [{ path: mc.disk('dup-1.img') }] } });
    expect(first.status).toBe(201);
    const second = await httpJson<{ error: { code: string; details: { host: string } } }>(`${leader.url}/v1/vms`, {
      method: 'POST',
      body: { host: 'host-b', uuid, name: 'dup-2', disks: [{ path: mc.disk('dup-2.img') }] },
    });
    expect([second.status, second.body.error.code, second.body.error.details.host]).toEqual([409, 'ALREADY_REGISTERED', 'host-a']);
    // On its own host, the same start again (a retry, with the uuid spelt otherwise) answers with
    // the VM that runs; a start asking for other disks is refused, not dropped: define changes them.
    const again = await httpJson<HostedVm>(`${leader.url}/v1/vms`, { method: 'POST', body: { host: 'host-a', uuid: uuid.replaceAll('-', '').toUpperCase(), name: 'dup-1', disks: [{ path: mc.disk('dup-1.img') }] } });
    expect([again.status, again.body.uuid, again.body.pid]).toEqual([201, uuid, first.body.pid]);
    const otherDisks = await httpJson<{ error: { code: string; details: { differs: string[] } } }>(`${leader.url}/v1/vms`, {
      method: 'POST',
      body: { host: 'host-a', uuid, name: 'dup-1', disks: [{ path: mc.disk('dup-1.img') }, { path: mc.disk('dup-3.img') }] },
    });
    expect([otherDisks.status, otherDisks.body.error.code, otherDisks.body.error.details.differs]).toEqual([409, 'ALREADY_REGISTERED', ['disks']]);
    const { vms } = (await httpJson<{ vms: HostedVm[] }>(`${leader.url}/v1/vms`)).body;
    expect(vms.filter((v) => v.uuid === uuid).map((v) => [v.host, v.locks.map((l) => l.resource)])).toEqual([['host-a', [mc.disk('dup-1.img')]]]);
  });

  it('refuses to start a VM under a uuid a client of the host’s agent holds as its owner (ALREADY_REGISTERED): the client keeps its lock', async () => {
    const uuid = randomUUID();
    const client = await mc.agent('host-b').client();
    await client.request('register', { owner: { uuid, name: 'a-client' } });
    const { grants } = await client.request('acquire', { resources: [{ name: mc.disk('client-held.img') }] });
    const started = await httpJson<{ error: { code: string } }>(`${leader.url}/v1/vms`, { method: 'POST', body: { host: 'host-b', uuid, name: 'clash', disks: [{ path: mc.disk('clash.img') }] } });
    expect([started.status, started.body.error.code]).toEqual([409, 'ALREADY_REGISTERED']);
    expect((await client.request('inquire', {})).locks.map((l) => l.token)).toEqual([grants[0]!.token]);
    const { vms } = (await httpJson<{ vms: HostedVm[] }>(`${leader.url}/v1/vms`)).body;
    expect(vms.filter((v) => v.uuid === uuid)).toEqual([]);
  });

  it('cancels a migration mid-send through either replica: it rolls back at once and the VM runs on where it was, under its own token; the `migrate` following it exits MIGRATION_CANCELLED; a cancel once it is done is refused', async () => {
    const vm = await mc.startVm('host-a', 'cancel1', ['cancel1.img']);
    const token = vm.locks[0]!.token;
    const disk = mc.disk('cancel1.img');
    // The send would take a minute; the commands below have 30 s.
    await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 60_000 });
    const following = cli(['migrate', 'cancel1', '--to', 'host-b']);
    const started = await waitFor(
      async () => (await leader.coordinator.store.list()).map((s) => s.record).find((r) => r.vm.uuid === vm.uuid && r.phase === 'performing') ?? false,
      { what: 'the send to begin', deadlineMs: 10_000 },
    );
    await waitFor(async () => (await mc.copies(vm.uuid))['host-a'] === 'paused', { what: 'the source copy paused at switchover', deadlineMs: 5_000 });

    const cancelled = await ok(['cancel', started.id], follower);
    expect(cancelled.stdout).toContain('cancelled: it rolls back, and cancel1 stays on host-a');
    expect(timelineTable(cancelled.stdout).rows.map((r) => r[0])).toEqual(FAILED_SEND);
    expect(cancelled.stdout).toMatch(/^VM cancel1 runs on host-a$/m);
    const migrated = await following;
    expect(migrated.status, why(migrated)).toBe(exitCodeFor('MIGRATION_CANCELLED'));
    expect(migrated.stderr).toContain(`error MIGRATION_CANCELLED: migration ${started.id} aborted: cancelled by an operator at perform; VM cancel1 stays on host-a`);
    const after = await record(started.id);
    expect(after.timeline.map((e) => e.error ?? '')).toEqual(['', '', '', '', 'MIGRATION_CANCELLED', '', '', '']);
    // The source never let go: it runs, with its lease and its own token; the incoming copy is gone.
    expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'running' });
    expect(await mc.leaseMap(vm.uuid)).toEqual({ [disk]: ['host-a', token] });
    await writtenUnder(disk, token);
    expect(checkDisk(disk).map((e) => [e.host, e.token])).toEqual([['host-a', token]]);

    // Cancelled again: it has ended aborted, answered as it is.
    const again = await ok(['cancel', started.id, '--no-wait', '--json']);
    expect(JSON.parse(again.stdout)).toMatchObject({ id: started.id, phase: 'aborted' });
    // A migration that is done can no longer be cancelled; an unknown one is not found.
    await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 0 });
    const done = await mc.migrate(vm.uuid, 'host-b');
    expect(done.phase).toBe('done');
    const late = await cli(['cancel', done.id]);
    expect(late.status, why(late)).toBe(exitCodeFor('MIGRATION_CONFLICT'));
    expect(late.stderr).toContain(`error MIGRATION_CONFLICT: migration ${done.id} is past its commit (done)`);
    const unknown = await cli(['cancel', randomUUID()]);
    expect(unknown.status, why(unknown)).toBe(exitCodeFor('MIGRATION_NOT_FOUND'));
  });

  it('serves a dashboard on either replica: replicas, hosts, the migration in flight, then the settled one, VMs and leases; a VM’s name as text', async () => {
    const name = `dash <i>"db"</i> & co`;
    const vm = await mc.startVm('host-a', name, ['dash-db.img']);
    await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 3_000 });
    const started = await mc.startMigration(vm.uuid, 'host-b');
    await mc.inPhase(started.id, 'performing');
    // The send is slow once the source has paused at switchover: the pages below see it paused.
    await waitFor(async () => (await mc.copies(vm.uuid))['host-a'] === 'paused', { what: 'the source copy paused at switchover', deadlineMs: 5_000 });

    const page = async (replica: CoordinatorService, query = ''): Promise<string> => {
      const res = await fetch(`${replica.url}/${query}`, { signal: AbortSignal.timeout(10_000) });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
      expect(res.headers.get('content-security-policy')).toMatch(/^default-src 'none'; style-src 'unsafe-inline'/);
      return res.text();
    };
    const rowOf = (rows: string[][], first: string): string[] | undefined => rows.find((r) => r[0] === first);
    for (const [replica, role] of [[leader, 'leader'], [follower, 'follower']] as const) {
      const html = await page(replica);
      expect(html).not.toContain('<i>');
      expect(html).toContain(`answered by ${replica.coordinator.id} (${role}) · leader coord-1`);
      expect(html).toContain('<meta http-equiv="refresh" content="2">');
      expect(htmlTable(html, 'replicas').rows).toEqual([
        ['coord-1', leader.url, 'leader'],
        ['coord-2', follower.url, 'follower'],
      ]);
      expect(htmlTable(html, 'hosts').rows.map((r) => r[0])).toEqual(['host-a', 'host-b']);
      expect(rowOf(htmlTable(html, 'open-migrations').rows, started.id)).toEqual([started.id, name, 'host-a', 'host-b', 'performing', started.startedAt]);
      const vms = htmlTable(html, 'vms');
      expect(vms.header).toEqual(['name', 'uuid', 'host', 'state', 'pid', 'tokens']);
      // The source's copy, paused at switchover and still holding its lease's token, and the incoming copy.
      const copies = vms.rows.filter((r) => r[1] === vm.uuid).map((r) => [r[0], r[2], r[3], r[5]]);
      expect(copies).toEqual([
        [name, 'host-a', 'paused', String(vm.locks[0]!.token)],
        [name, 'host-b', 'incoming', '-'],
      ]);
      const leases = htmlTable(html, 'leases');
      const lease = leases.rows.find((r) => r[0]!.endsWith('/dash-db.img'));
      expect(lease && [lease[3], lease[4], lease[5]]).toEqual(['host-a', name, String(vm.locks[0]!.token)]);
    }

    const done = await settled(started.id);
    expect(done.phase).toBe('done');
    const after = await page(follower, '?refresh=0');
    expect(after).not.toContain('http-equiv="refresh"');
    expect(rowOf(htmlTable(after, 'open-migrations').rows, started.id)).toBeUndefined();
    const recent = htmlTable(after, 'recent-migrations');
    expect(recent.header.at(-1)).toBe('handoff window');
    // Newest first: the one that just ended leads, with the window its record gives.
    expect(recent.rows[0]).toEqual([started.id, name, 'host-a', 'host-b', 'done', started.startedAt, `${handoffWindowMs(done)!.toFixed(1)} ms`]);
    const lease = htmlTable(after, 'leases').rows.find((r) => r[0]!.endsWith('/dash-db.img'));
    expect(lease?.[3]).toBe('host-b');
    expect(Number(lease?.[5])).toBeGreaterThan(vm.locks[0]!.token);

    const bad = await httpJson<{ error: { code: string } }>(`${leader.url}/?refresh=soon`);
    expect([bad.status, bad.body.error.code]).toEqual([400, 'INVALID_REQUEST']);
  });

  it('answers a route it does not have, or a URL that does not decode, with the API’s error body', async () => {
    const unknown = await httpJson<{ error: { code: string } }>(`${leader.url}/v1/nothing-here`);
    expect([unknown.status, unknown.body.error.code]).toEqual([404, 'UNKNOWN_METHOD']);
    const badUrl = await httpJson<{ error: { code: string } }>(`${leader.url}/v1/migrations/%E0%A4%A`);
    expect([badUrl.status, badUrl.body.error.code]).toEqual([400, 'INVALID_REQUEST']);
  });

  it('answers MIGRATION_NOT_FOUND for an unknown migration and UNAVAILABLE, naming the URL, when nobody listens', async () => {
    const nobody = `http://127.0.0.1:${await freePort()}`;
    const [unknown, unknownJson, unreachable, unreachableJson] = await Promise.all([
      cli(['migrations', 'no-such-migration']),
      cli(['migrations', 'no-such-migration', '--json']),
      runCli(['migrate', 'cli-web1', '--to', 'host-b', '--coordinator', nobody], { deadlineMs: 30_000 }),
      runCli(['vm', 'list', '--json', '--coordinator', nobody], { deadlineMs: 30_000 }),
    ]);
    expect(unknown.status, why(unknown)).toBe(exitCodeFor('MIGRATION_NOT_FOUND'));
    expect(unknown.stderr).toMatch(/^error MIGRATION_NOT_FOUND: no migration no-such-migration$/m);
    expect(unknownJson.status, why(unknownJson)).toBe(exitCodeFor('MIGRATION_NOT_FOUND'));
    expect(JSON.parse(unknownJson.stdout)).toEqual({ error: { code: 'MIGRATION_NOT_FOUND', message: 'no migration no-such-migration', details: { migration: 'no-such-migration' } } });
    expect(unreachable.status, why(unreachable)).toBe(exitCodeFor('UNAVAILABLE'));
    expect(unreachable.stderr).toContain(`error UNAVAILABLE: cannot reach the coordinator at ${nobody}/v1/migrations (ECONNREFUSED)`);
    expect(unreachableJson.status, why(unreachableJson)).toBe(exitCodeFor('UNAVAILABLE'));
    expect(JSON.parse(unreachableJson.stdout)).toMatchObject({ error: { code: 'UNAVAILABLE', details: { url: `${nobody}/v1/vms` } } });
  });
});
