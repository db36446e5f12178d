import { randomUUID } from 'node:crypto';
import { closeSync, constants, existsSync, openSync, readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  asBatonError,
  isSettled,
  lockFileName,
  migrationRule,
  nextStep,
  parseMigrationRecord,
  type HostedVm,
  type LeaseValue,
  type MigrationPhase,
  type MigrationRecord,
  type MigrationStep,
} from '@baton/core';
import { Bus, BusConfigSchema } from '@baton/bus';
import type { Log } from '@baton/coordinator';
import { LeaseTable, type EtcdConnection, type HandoffMarker } from '@baton/etcd';
import {
  checkDisk,
  connectEtcd,
  CoordinatorProcess,
  EtcdCluster,
  EtcdServer,
  httpJson,
  MigrationCluster,
  monoNow,
  NatsServer,
  openSession,
  processState,
  readDiskRecords,
  TcpProxy,
  waitFor,
} from '../support/index.js';
import { Contender } from './fault-kit.js';

/**
 * Live migration under faults (DESIGN §6, S1–S6), with real processes throughout: agents with sim
 * VMs that write `vm host token seq t` to their disks through a fence guard, etcd, NATS, and
 * coordinators (as processes where the coordinator is what is killed). Every history is checked
 * the same way at the end (expectSettledVm): the VM has exactly one running copy, where the
 * migration's outcome says, and no other (but the paused one docs/migration.md says a destination
 * down past its TTL keeps, stated in that test); its leases are that host's with no handoff marker left; it writes
 * under the lease's token; and each disk's contents pass S1/S2 (checkDisk), every epoch written
 * by the one host that legitimately held that token (the source's grant, the destination's
 * commit, the source's give-back), so nothing a paused, fenced or superseded copy wrote was
 * accepted.
 */

let etcd: EtcdServer;
let nats: NatsServer;
beforeAll(async () => {
  [etcd, nats] = await Promise.all([EtcdServer.start(), NatsServer.start({ jetstream: true })]);
});
afterAll(async () => {
  await Promise.all([etcd?.close(), nats?.close()]);
});

/** Figures go to stdout as JSON lines, for the report. */
function figure(name: string, values: Record<string, unknown>): void {
  console.log(JSON.stringify({ figure: name, ...values }));
}

function disposer(fn: () => Promise<unknown>): AsyncDisposable {
  return { [Symbol.asyncDispose]: async () => void (await fn()) };
}

/** `promise`, or a rejection naming `what` after `deadlineMs`: a teardown wait with a deadline too. */
async function within<T>(promise: Promise<T>, deadlineMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no end within ${deadlineMs} ms`)), deadlineMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

const quiet: Log = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

// ---------------------------------------------------------------------------------------------
// What the test sees of the cluster: every version of every migration record, and the election.
// ---------------------------------------------------------------------------------------------

interface SeenRecord {
  /** When the test's watch delivered it (host monotonic ms, the clock of records and disks). */
  at: number;
  record: MigrationRecord;
}

interface SeenKey {
  at: number;
  key: string;
}

/**
 * An etcd watch of the cluster's migration records and coordinator candidacies, from the test's
 * own connection (not through any proxy a test faults). Hooks run synchronously on each record
 * version, so a fault can be landed the moment a phase is written.
 */
class ClusterWatch implements AsyncDisposable {
  readonly records: SeenRecord[] = [];
  readonly candidaciesGone: SeenKey[] = [];
  private readonly hooks = new Set<(seen: SeenRecord) => void>();
  private readonly cancels: { cancel(): Promise<void> }[] = [];

  private constructor(readonly conn: EtcdConnection) {}

  static electionPrefix(conn: EtcdConnection): string {
    return `${conn.keys.prefix}election/coordinator/`;
  }

  static async start(conn: EtcdConnection): Promise<ClusterWatch> {
    const w = new ClusterWatch(conn);
    const revision = (await conn.range(conn.keys.migrations, { prefix: true, countOnly: true })).header.revision;
    const fromRevision = String(BigInt(revision) + 1n);
    w.cancels.push(
      await conn.watch(conn.keys.migrations, { prefix: true, fromRevision }, {
        put: (kv) => {
          const seen = { at: monoNow(), record: parseMigrationRecord(JSON.parse(kv.value.toString())) };
          w.records.push(seen);
          for (const hook of w.hooks) hook(seen);
        },
      }),
    );
    w.cancels.push(
      await conn.watch(ClusterWatch.electionPrefix(conn), { prefix: true, fromRevision }, {
        delete: (kv) => void w.candidaciesGone.push({ at: monoNow(), key: kv.key.toString() }),
      }),
    );
    return w;
  }

  versions(id: string): SeenRecord[] {
    return this.records.filter((s) => s.record.id === id);
  }

  latest(id: string): MigrationRecord | undefined {
    return this.versions(id).at(-1)?.record;
  }

  /** The first version of the record that matches, waiting for it. */
  until(id: string, match: (r: MigrationRecord) => boolean, what: string, deadlineMs = 20_000): Promise<SeenRecord> {
    return waitFor(() => this.versions(id).find((s) => match(s.record)) ?? false, { what: `migration ${id.slice(0, 8)}: ${what}`, deadlineMs, intervalMs: 2 });
  }

  phase(id: string, phase: MigrationPhase, deadlineMs?: number): Promise<SeenRecord> {
    return this.until(id, (r) => r.phase === phase, `phase ${phase}`, deadlineMs);
  }

  settled(id: string, deadlineMs?: number): Promise<MigrationRecord> {
    return this.until(id, isSettled, 'its end', deadlineMs).then((s) => s.record);
  }

  /**
   * Calls `action` synchronously on the first version (from now on) that matches, and resolves
   * with it. A version that matched before the call is too late for the fault: that fails, as
   * does no match within the deadline.
   */
  on(match: (r: MigrationRecord) => boolean, action: (seen: SeenRecord) => void, what: string, deadlineMs = 20_000): Promise<SeenRecord> {
    if (this.records.some((s) => match(s.record))) return Promise.reject(new Error(`${what}: already past when the fault was armed`));
    const done = Promise.withResolvers<SeenRecord>();
    const timer = setTimeout(() => {
      this.hooks.delete(hook);
      done.reject(new Error(`${what}: not reached within ${deadlineMs} ms`));
    }, deadlineMs);
    const hook = (seen: SeenRecord): void => {
      if (!match(seen.record)) return;
      this.hooks.delete(hook);
      clearTimeout(timer);
      try {
        action(seen);
        done.resolve(seen);
      } catch (err) {
        done.reject(err as Error);
      }
    };
    this.hooks.add(hook);
    return done.promise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.hooks.clear();
    await Promise.all(this.cancels.map((c) => c.cancel().catch(() => undefined)));
  }
}

/** The coordinator candidacies in line (the leader first), by key and replica id. */
async function electionLine(conn: EtcdConnection): Promise<{ key: string; id: string }[]> {
  const res = await conn.range(ClusterWatch.electionPrefix(conn), { prefix: true });
  return [...res.kvs]
    .sort((a, b) => (BigInt(a.create_revision) < BigInt(b.create_revision) ? -1 : 1))
    .map((kv) => ({ key: kv.key.toString(), id: (JSON.parse(kv.value.toString()) as { id: string }).id }));
}

/** Each resource of a migration as etcd has it now: its exclusive lease (with its token) and its handoff marker. */
async function leaseState(conn: EtcdConnection, record: MigrationRecord): Promise<{ resource: string; lease?: LeaseValue & { token: number }; marker?: HandoffMarker }[]> {
  return Promise.all(
    record.resources.map(async (r) => {
      const res = await conn.range(conn.keys.resource(r.lockspace, r.name), { prefix: true });
      const excl = res.kvs.find((kv) => kv.key.toString().endsWith('/excl'));
      const marker = res.kvs.find((kv) => kv.key.toString().endsWith('/handoff'));
      return {
        resource: r.name,
        ...(excl ? { lease: { ...(JSON.parse(excl.value.toString()) as LeaseValue), token: Number(excl.mod_revision) } } : {}),
        ...(marker ? { marker: JSON.parse(marker.value.toString()) as HandoffMarker } : {}),
      };
    }),
  );
}

/** The `running` events a VM's copy on `host` has emitted (its events.log, while its directory exists). */
function runningEvents(mc: MigrationCluster, host: string, uuid: string): number {
  const path = join(mc.agent(host).stateDir, 'vms', uuid, 'events.log');
  if (!existsSync(path)) return 0;
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.includes('"event":"running"')).length;
}

/**
 * A probe that passes once the step the record waits for has taken effect, where the test can see
 * it: in etcd for the coordinator's own transactions, on the VM's copies for the agents' steps.
 */
function stepEffect(mc: MigrationCluster, conn: EtcdConnection, record: MigrationRecord): { step: MigrationStep; done: () => Promise<boolean> } {
  const command = nextStep(record);
  if (!command) throw new Error(`migration ${record.id} is closed`);
  const { id, vm, source, destination } = record;
  const leases = () => leaseState(conn, record);
  const state = async (host: string) => (await mc.driver(host).find(vm.uuid))?.state;
  const baseline = runningEvents(mc, source, vm.uuid);
  const done: Record<MigrationStep, () => Promise<boolean>> = {
    begin: async () => (await leases()).every((s) => s.marker?.migration === id && s.marker.step === 'begin'),
    mark: async () => (await leases()).every((s) => s.marker?.migration === id && s.marker.step === 'mark'),
    commit: async () => (await leases()).every((s) => s.lease?.grant === `${id}:commit`),
    unmark: async () => (await leases()).every((s) => s.marker === undefined),
    'give-back': async () => (await leases()).every((s) => s.lease?.grant === `${id}:give-back`),
    prepare: async () => (await state(destination)) === 'incoming',
    // The state arrived: the incoming copy is paused, holding it.
    perform: async () => (await state(destination)) === 'paused',
    resume: async () => (await state(destination)) === 'running',
    confirm: async () => (await state(source)) === undefined,
    discard: async () => (await state(destination)) === undefined,
    restore: async () => runningEvents(mc, source, vm.uuid) > baseline,
  };
  return { step: command.step, done: done[command.step] };
}

/**
 * The migration's closed record; if it does not end in time, an error that says what was left
 * behind: the record's phase, the leases, where the VM's copies are, and the coordinator's last words.
 */
async function ended(mc: MigrationCluster, conn: EtcdConnection, watch: ClusterWatch, id: string, deadlineMs: number, log: string[] = []): Promise<MigrationRecord> {
  try {
    return await watch.settled(id, deadlineMs);
  } catch (err) {
    const stuck = watch.latest(id);
    if (!stuck) throw err;
    const leases = (await leaseState(conn, stuck)).map((s) => `${s.lease?.host}:${s.lease?.grant}${s.marker ? `+marker(${s.marker.step})` : ''}`).join(', ');
    const leading = mc.coordinators.map((c) => `${c.coordinator.id}:${c.coordinator.isLeader ? 'leads' : 'follows'}`).join(' ');
    const said = log.filter((l) => l.includes(id)).slice(-3).join(' | ');
    throw new Error(
      `migration ${id} never ended: the record stays in ${stuck.phase} (${stuck.timeline.map((e) => e.phase).join(' ')}); leases ${leases}; ` +
        `copies ${JSON.stringify(await mc.copies(stuck.vm.uuid))}; coordinators ${leading || '(processes)'}${said ? `; the coordinator said: ${said}` : ''}`,
      { cause: err },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// The end-of-history check every fault shares.
// ---------------------------------------------------------------------------------------------

/**
 * Per resource, who may have written under which token: the source under its grant (read at the
 * first migration's begin), each destination under its commit, a source under its give-back.
 * Nothing else held a valid lease of the VM's disks, so nothing else may appear on them.
 */
function legitimateWriters(records: MigrationRecord[]): Map<string, Map<number, string>> {
  const first = records[0]!;
  const writers = new Map(first.resources.map((r, i) => [r.name, new Map([[first.tokens.grants![i]!, first.source]])]));
  for (const r of records) {
    for (const w of writers.values()) {
      if (r.tokens.commit !== undefined) w.set(r.tokens.commit, r.destination);
      if (r.phase === 'aborted' && r.tokens.commit !== undefined) w.set(r.tokens.revert!, r.source);
    }
  }
  return writers;
}

/**
 * The VM's history after its migrations (`records`, in order, all closed) is clean: it has exactly
 * one running copy, on `host`, and no other copy but the `leftovers` the design says a fault
 * leaves (paused for good); its leases are that host's, with no handoff marker left; it writes
 * under those leases' tokens; and every epoch on every disk passes S1/S2 and was written by the
 * host that held that token. Returns the epochs per disk.
 */
async function expectSettledVm(
  mc: MigrationCluster,
  conn: EtcdConnection,
  vm: { uuid: string; name: string },
  records: MigrationRecord[],
  host: string,
  /** Copies the design leaves behind for this fault, paused for good (docs/migration.md). */
  leftovers: Record<string, 'paused'> = {},
): Promise<ReturnType<typeof checkDisk>[]> {
  expect(records.every(isSettled), 'every migration ended').toBe(true);
  expect(await mc.copies(vm.uuid), 'exactly one copy of the VM, running').toEqual({ ...leftovers, [host]: 'running' });
  const state = await leaseState(conn, records.at(-1)!);
  const writers = legitimateWriters(records);
  const out: ReturnType<typeof checkDisk>[] = [];
  for (const s of state) {
    expect(s.marker, `no handoff marker left on ${s.resource}`).toBeUndefined();
    expect(s.lease?.host, `the lease of ${s.resource} is ${host}'s`).toBe(host);
    const token = s.lease!.token;
    // S3: the copy that runs writes, and under the lease it holds now.
    await waitFor(() => readDiskRecords(s.resource).at(-1)?.token === token, { what: `${vm.name} writing to ${s.resource} under token ${token}`, deadlineMs: 5_000 });
    const epochs = checkDisk(s.resource);
    for (const e of epochs) {
      expect(e.vm).toBe(vm.name);
      expect(`${e.host} wrote under token ${e.token}`).toBe(`${writers.get(s.resource)!.get(e.token) ?? 'nobody'} wrote under token ${e.token}`);
    }
    expect(epochs.at(-1)).toMatchObject({ host, token });
    // The guest's counter travels with its state: a copy that wrote after its state was sent (a
    // source unpaused at switchover) shows as the counter going back when the destination starts.
    const lines = readDiskRecords(s.resource);
    const back = lines.findIndex((r, i) => i > 0 && r.seq <= lines[i - 1]!.seq);
    expect(back < 0 ? 'the counter only rises' : `${lines[back]!.host} wrote seq ${lines[back]!.seq} after ${lines[back - 1]!.host} wrote seq ${lines[back - 1]!.seq}`, `seq on ${s.resource}`).toBe('the counter only rises');
    out.push(epochs);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 1. The coordinator leader SIGKILLed at every step boundary.
// ---------------------------------------------------------------------------------------------

/**
 * The replicas' replies (etcd and NATS) are held this long on the way back to them, so that once
 * the test has seen a step take effect, the leader that issued it cannot yet know: the SIGKILL
 * lands after the step and before its result is saved, every time, not when a race allows.
 */
const REPLY_DELAY_MS = 150;
const COORDINATOR_TTL_SECONDS = 2;
const MOVE_AFTER_ELECTION_MS = 3_000;

const nativeLocks = createRequire(import.meta.url)(fileURLToPath(new URL('../../packages/agent/native/build/Release/baton_sys.node', import.meta.url))) as {
  setlk(fd: number, kind: 0 | 1 | 2, start: number, len: number, ofd: boolean): number;
};

/**
 * A third process on the shared lock directory (this test process, through the agent's own fcntl
 * binding) taking a disk's lock file (an OFD lock on byte 0, as an agent would) the moment it is
 * free, and keeping it: once the source has dropped its local locks at the send, the destination
 * cannot take them after commit, which is the one way into S5's abort after commit (`returning`).
 */
class LockFileGrab implements Disposable {
  private fd: number | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(readonly path: string) {
    this.timer = setInterval(() => this.attempt(), 1);
  }

  get held(): boolean {
    return this.fd !== undefined;
  }

  private attempt(): void {
    if (this.fd !== undefined) return;
    let fd: number;
    try {
      fd = openSync(this.path, constants.O_RDWR);
    } catch {
      return; // not created yet, or removed as unused: try again
    }
    if (nativeLocks.setlk(fd, 2, 0, 1, true) === 0) {
      this.fd = fd;
      clearInterval(this.timer);
    } else {
      closeSync(fd);
    }
  }

  release(): void {
    clearInterval(this.timer);
    if (this.fd === undefined) return;
    nativeLocks.setlk(this.fd, 0, 0, 1, true);
    closeSync(this.fd);
    this.fd = undefined;
  }

  [Symbol.dispose](): void {
    this.release();
  }
}

interface KillFigure {
  migration: string;
  phase: MigrationPhase;
  step: MigrationStep;
  killed: string;
  newLeader: string;
  electedAfterKillMs: number;
  movedAfterElectionMs: number;
  movedTo: MigrationPhase;
}

describe('coordinator leader SIGKILLed at each step boundary (replicas as processes)', () => {
  it(
    'a new leader resumes or rolls back every phase, the record moving again within 3 s of its election',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url] });
      await using etcdLink = await TcpProxy.start({ target: { port: etcd.clientPort } });
      await using natsLink = await TcpProxy.start({ target: { port: nats.port } });
      etcdLink.toClient.delay(REPLY_DELAY_MS);
      natsLink.toClient.delay(REPLY_DELAY_MS);
      const replicas = new Map<string, CoordinatorProcess>();
      await using _replicas = disposer(() => Promise.all([...replicas.values()].map((c) => c.close())));
      for (const id of ['c1', 'c2', 'c3']) {
        const config = mc.coordinatorConfig(id, {
          etcd: { endpoints: [`http://${etcdLink.hostPort}`], ttlSeconds: COORDINATOR_TTL_SECONDS },
          nats: { servers: [`nats://${natsLink.hostPort}`] },
        });
        replicas.set(id, await CoordinatorProcess.start(config));
      }
      await using conn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const any = (): CoordinatorProcess => [...replicas.values()].find((c) => c.running)!;
      await waitFor(async () => (await electionLine(conn)).length === 3, { what: 'three candidacies', deadlineMs: 10_000 });

      const created = await httpJson<HostedVm>(`${any().url}/v1/vms`, {
        method: 'POST',
        body: { host: 'host-a', uuid: randomUUID(), name: 'k1', disks: [{ path: mc.disk('k1-root.img') }, { path: mc.disk('k1-data.img') }] },
        timeoutMs: 10_000,
      });
      expect(created.status).toBe(201);
      const vm = created.body;
      await waitFor(() => checkDisk(mc.disk('k1-root.img')).length > 0, { what: 'k1 writing on host-a', deadlineMs: 5_000 });

      const figures: KillFigure[] = [];
      const migrate = async (to: string): Promise<string> => {
        const res = await httpJson<MigrationRecord>(`${any().url}/v1/migrations`, { method: 'POST', body: { vm: vm.uuid, to }, timeoutMs: 10_000 });
        expect(res.status, JSON.stringify(res.body)).toBe(202);
        return res.body.id;
      };

      /**
       * Once the record is at `phase` and its step has taken effect, SIGKILL the leader (its reply
       * still on the way), restart the replica as a supervisor would, and measure the election and
       * the record's next move.
       */
      const killAt = async (id: string, phase: MigrationPhase, onMoved?: () => void): Promise<void> => {
        const at = await watch.phase(id, phase);
        const effect = stepEffect(mc, conn, at.record);
        await waitFor(effect.done, { what: `${effect.step} of ${id.slice(0, 8)} to take effect`, deadlineMs: 10_000, intervalMs: 3 });
        const [leader] = await electionLine(conn);
        const victim = replicas.get(leader!.id)!;
        expect(victim.running, `the leader ${leader!.id} runs`).toBe(true);
        const killedAt = monoNow();
        await victim.kill();
        // Read from etcd itself, not the watch, which could still be delivering a last save.
        const stored = parseMigrationRecord(JSON.parse((await conn.range(conn.keys.migration(id))).kvs[0]!.value.toString()));
        expect(stored.phase, `the leader died after ${effect.step} took effect and before it saved the result`).toBe(phase);
        await victim.restart();
        const elected = await waitFor(() => watch.candidaciesGone.find((g) => g.key === leader!.key) ?? false, { what: `${leader!.id}'s candidacy to expire`, deadlineMs: 10_000 });
        const newLeader = (await electionLine(conn))[0]!.id;
        const moved = await watch.until(id, (r) => r.timeline.length > stored.timeline.length, 'its next version after the kill', 10_000);
        onMoved?.();
        figures.push({
          migration: id.slice(0, 8),
          phase,
          step: effect.step,
          killed: leader!.id,
          newLeader,
          electedAfterKillMs: Math.round(elected.at - killedAt),
          movedAfterElectionMs: Math.round(moved.at - elected.at),
          movedTo: moved.record.phase,
        });
        expect(moved.record.phase).toBe(migrationRule(phase)!.ok);
      };

      // M1, host-a → host-b: the leader dies in every step of the way to `done`.
      const m1 = await migrate('host-b');
      for (const phase of ['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'confirming'] as const) await killAt(m1, phase);
      const r1 = await watch.settled(m1);
      expect(r1.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1], 'host-b');

      // M2, host-b → host-a with a failing send: the leader dies in every step of the abort before commit.
      await mc.driver('host-b').inject(vm.uuid, { failSends: 1 });
      const m2 = await migrate('host-a');
      for (const phase of ['unmarking', 'discarding', 'restoring'] as const) await killAt(m2, phase);
      const r2 = await watch.settled(m2);
      expect(r2.phase).toBe('aborted');
      expect(r2.timeline.find((e) => e.phase === 'unmarking')?.error).toBe('IO_ERROR');
      await expectSettledVm(mc, conn, vm, [r1, r2], 'host-b');

      // M3, host-b → host-a, where the destination cannot take the disk's lock file after commit:
      // the leader dies while the leases go back (give-back), in the abort after commit.
      const lockDir = realpathSync(mc.storage.lockDir);
      using grab = new LockFileGrab(join(lockDir, lockFileName(r2.resources[0]!.name)));
      const m3 = await migrate('host-a');
      await killAt(m3, 'returning', () => {
        expect(grab.held, 'the third process held the lock file').toBe(true);
        // Let the source re-take its lock file, so the restore can run it again.
        grab.release();
      });
      const r3 = await watch.settled(m3);
      expect(r3.phase).toBe('aborted');
      expect(r3.timeline.map((e) => e.phase)).toEqual(['begun', 'preparing', 'prepared', 'performing', 'sent', 'committed', 'returning', 'restoring', 'aborted']);
      expect(r3.timeline.find((e) => e.phase === 'returning')?.error).toBe('RESOURCE_BUSY');
      // S5: the destination never ran it: host-a appears on the disks only before M1.
      const epochs = await expectSettledVm(mc, conn, vm, [r1, r2, r3], 'host-b');
      for (const disk of epochs) expect(disk.map((e) => e.host)).toEqual(['host-a', 'host-b', 'host-b']);

      for (const f of figures) figure('F-mig-1 leader killed', { ...f });
      const worst = Math.max(...figures.map((f) => f.movedAfterElectionMs));
      figure('F-mig-1 summary', { kills: figures.length, worstMovedAfterElectionMs: worst, replyDelayMs: REPLY_DELAY_MS, coordinatorTtlSeconds: COORDINATOR_TTL_SECONDS });
      expect(figures).toHaveLength(11);
      for (const f of figures) expect(f.movedAfterElectionMs, `${f.phase}: moved ${f.movedAfterElectionMs} ms after ${f.newLeader}'s election`).toBeLessThan(MOVE_AFTER_ELECTION_MS);
    },
    180_000,
  );
});

// ---------------------------------------------------------------------------------------------
// 2. Agents SIGKILLed mid-migration: the source mid-send, the destination after commit.
// ---------------------------------------------------------------------------------------------

describe('agents SIGKILLed mid-migration', () => {
  it(
    'the source agent killed mid-send and restarted: the migration ends with one running copy and clean disks',
    async () => {
      // A 5 s session: the restarted agent finds its session alive and adopts it (a crash, not a host death).
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], ttlSeconds: 5 });
      // The perform the dead agent never answers is sent again after 4 s rather than the fixture's 10.
      const { coordinator } = await mc.addCoordinator('coord-1', quiet, { sendTimeoutMs: 4_000 });
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 5, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const vm = await mc.startVm('host-a', 's1', ['s1-root.img', 's1-data.img']);
      await waitFor(() => checkDisk(mc.disk('s1-root.img')).length > 0, { what: 's1 writing on host-a', deadlineMs: 5_000 });
      // A slow send: the VM sits paused at switchover, its state not yet sent, while the agent dies.
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_500 });

      const started = await coordinator.migrate({ vm: 's1', to: 'host-b' });
      await watch.phase(started.id, 'performing');
      await waitFor(async () => (await mc.driver('host-a').find(vm.uuid))?.state === 'paused', { what: 's1 paused for the send', deadlineMs: 5_000, intervalMs: 5 });
      const killedAt = monoNow();
      await mc.agent('host-a').crash();
      expect(watch.latest(started.id)!.phase, 'the agent died mid-send').toBe('performing');
      await mc.agent('host-a').restart();
      const restartedAfterMs = monoNow() - killedAt;

      const record = await watch.settled(started.id, 30_000);
      // The VM process finished its send while its agent was down; the restarted agent re-takes the
      // source's local locks from its leases, and the perform sent again finds the VM paused with
      // its state sent, and sends it again: the destination takes it (it does not run yet).
      expect(record.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [record], 'host-b');
      figure('F-mig-2 source killed mid-send', { outcome: record.phase, restartedAfterMs: Math.round(restartedAfterMs), endedAfterKillMs: Math.round(watch.versions(started.id).at(-1)!.at - killedAt), timeline: record.timeline.map((e) => e.phase) });
    },
    60_000,
  );

  it(
    'the destination agent stopped before commit, SIGKILLed after it and restarted: the VM is unpaused only by the restarted agent, once',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], ttlSeconds: 5 });
      const { coordinator } = await mc.addCoordinator();
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 5, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const vm = await mc.startVm('host-a', 'd1', ['d1-root.img', 'd1-data.img']);
      await waitFor(() => checkDisk(mc.disk('d1-root.img')).length > 0, { what: 'd1 writing on host-a', deadlineMs: 5_000 });
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 300 });
      const dest = mc.agent('host-b');

      // The destination agent is frozen from `performing` on (the send needs only its incoming VM
      // process, not the agent), so it is frozen for certain when the resume arrives after commit.
      const started = await coordinator.migrate({ vm: 'd1', to: 'host-b' });
      await watch.on((r) => r.id === started.id && r.phase === 'performing', () => dest.json.proc.signal('SIGSTOP'), 'performing');
      await waitFor(() => processState(dest.pid) === 'T', { what: 'host-b agent stopped', deadlineMs: 2_000, intervalMs: 1 });
      const committed = await watch.phase(started.id, 'committed');
      // Committed to host-b, which cannot run it: the copy there is paused with the state, and no one
      // runs the VM (the source's copy is paused too, its local locks dropped).
      expect(await mc.copies(vm.uuid)).toEqual({ 'host-a': 'paused', 'host-b': 'paused' });
      const killedAt = monoNow();
      await dest.crash();
      await dest.restart();
      const restartedAfterMs = monoNow() - killedAt;

      const record = await watch.settled(started.id, 30_000);
      // The restarted agent adopts its session, whose leases now include the VM's (committed to it),
      // re-takes their local locks for its live incoming copy, and the resume sent again runs it.
      expect(record.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [record], 'host-b');
      // The copy on host-b was unpaused once (by the resume), never by the agent restarting on its own.
      expect(runningEvents(mc, 'host-b', vm.uuid)).toBe(1);
      figure('F-mig-2 destination killed after commit', {
        outcome: record.phase,
        restartedAfterMs: Math.round(restartedAfterMs),
        downtimeMs: Math.round(watch.versions(started.id).find((s) => s.record.phase === 'confirming')!.at - committed.at),
        timeline: record.timeline.map((e) => e.phase),
      });
    },
    60_000,
  );
});

describe('the source VM process stalled while it is confirmed away', () => {
  it(
    'a source copy that does not answer for a while (SIGSTOP) is still destroyed: done means one copy',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url] });
      const log: string[] = [];
      const { coordinator } = await mc.addCoordinator('coord-1', capturingLog(log));
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const vm = await mc.startVm('host-a', 'z1', ['z1-root.img']);
      await waitFor(() => checkDisk(mc.disk('z1-root.img')).length > 0, { what: 'z1 writing on host-a', deadlineMs: 5_000 });
      // The source copy's process (a QEMU busy or swapped out, here SIGSTOPped) stops answering
      // its control socket from the commit on, so the confirm finds it unresponsive, not gone.
      const sourcePid = vm.pid;
      let stopped = false;
      await using _cont = disposer(async () => void (stopped && process.kill(sourcePid, 'SIGCONT')));
      const started = await coordinator.migrate({ vm: 'z1', to: 'host-b' });
      await watch.on((r) => r.id === started.id && r.phase === 'committed', () => {
        process.kill(sourcePid, 'SIGSTOP');
        stopped = true;
      }, 'committed');
      // The stall ends once the confirm has been answered while it lasted: by a refusal the
      // coordinator will retry (the copy did not answer), or by the record closing.
      await waitFor(() => watch.latest(started.id)?.phase === 'done' || log.some((l) => l.startsWith(`confirm of migration ${started.id} did not go through`)), {
        what: 'the confirm answered while the source copy is stalled',
        deadlineMs: 15_000,
      });
      process.kill(sourcePid, 'SIGCONT');
      stopped = false;
      const record = await ended(mc, conn, watch, started.id, 20_000);
      expect(record.phase).toBe('done');
      // `done` says the source copy is gone (confirm destroys it): it must be, not left paused.
      await expectSettledVm(mc, conn, vm, [record], 'host-b');
    },
    60_000,
  );
});

describe('the destination agent down past its session TTL after commit', () => {
  it(
    'the leases vanish with its session; the migration rolls back to the source, which runs the only running copy; the VM can migrate there again',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], ttlSeconds: 3 });
      const log: string[] = [];
      const { coordinator } = await mc.addCoordinator('coord-1', capturingLog(log));
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const vm = await mc.startVm('host-a', 'x1', ['x1-root.img', 'x1-data.img']);
      await waitFor(() => checkDisk(mc.disk('x1-root.img')).length > 0, { what: 'x1 writing on host-a', deadlineMs: 5_000 });
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 300 });
      const dest = mc.agent('host-b');

      // As above, the destination agent is frozen before the commit, but now it stays down until
      // its session has expired: the leases committed to it go with the session.
      const started = await coordinator.migrate({ vm: 'x1', to: 'host-b' });
      await watch.on((r) => r.id === started.id && r.phase === 'performing', () => dest.json.proc.signal('SIGSTOP'), 'performing');
      await waitFor(() => processState(dest.pid) === 'T', { what: 'host-b agent stopped', deadlineMs: 2_000, intervalMs: 1 });
      await watch.phase(started.id, 'committed');
      await waitFor(async () => (await conn.range(conn.keys.host('host-b'))).kvs.length === 0, { what: 'host-b’s session to expire', deadlineMs: 15_000, intervalMs: 50 });
      expect((await leaseState(conn, started)).map((s) => s.lease), 'the committed leases went with the session').toEqual([undefined, undefined]);
      await dest.crash();
      await dest.restart();

      const record = await ended(mc, conn, watch, started.id, 30_000, log);
      // The restarted agent has a new session and no lease: it cannot resume (LEASE_LOST), so the
      // leases go back to the source (nothing is held under them) and the source runs its copy.
      expect(record.phase).toBe('aborted');
      expect(record.timeline.find((e) => e.phase === 'returning')?.error).toBe('LEASE_LOST');
      // One running copy, on the source: the destination's copy, never unpaused, went when its
      // resume was refused (LEASE_LOST), since the abort after commit has no discard step.
      const left = await mc.copies(vm.uuid);
      expect(left['host-b'], 'the destination destroys its copy when its resume is refused').toBeUndefined();
      await expectSettledVm(mc, conn, vm, [record], 'host-a', {});
      figure('F-mig-2 destination down past its TTL', { outcome: record.phase, copies: left, timeline: record.timeline.map((e) => `${e.phase}${e.error ? `(${e.error})` : ''}`).join(' ') });

      // And the VM can still go to host-b later: one copy at the end.
      const again = await coordinator.migrate({ vm: 'x1', to: 'host-b' });
      const record2 = await ended(mc, conn, watch, again.id, 30_000, log);
      expect(record2.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [record, record2], 'host-b');
    },
    60_000,
  );
});

// ---------------------------------------------------------------------------------------------
// 3. NATS restarted mid-migration; agent commands duplicated, reordered and replayed late.
// ---------------------------------------------------------------------------------------------

interface AgentCommand {
  label: string;
  subject: string;
  params: { key: NonNullable<ReturnType<typeof nextStep>>['key']; record: MigrationRecord };
}

/**
 * The agent commands the coordinator sent for a migration, rebuilt exactly: for each version of
 * the record that waited for an agent's step, the coordinator sent `{key: nextStep(record).key,
 * record}` on `baton.<cluster>.agent.<host>.migration.<step>` (saga/agent-steps.ts).
 */
function agentCommands(bus: Bus, versions: SeenRecord[]): AgentCommand[] {
  const out = new Map<string, AgentCommand>();
  for (const { record } of versions) {
    const command = nextStep(record);
    if (!command || command.target === 'etcd') continue;
    const label = `${record.id.slice(0, 8)} ${command.step}@${command.key.token} → ${command.host}`;
    out.set(label, { label, subject: bus.subjects.agent(command.host, `migration.${command.step}`), params: { key: command.key, record } });
  }
  return [...out.values()];
}

/** Send each command (concurrently, as a burst of late deliveries would arrive); 'ok' or the refusal's code. */
async function replay(bus: Bus, commands: AgentCommand[]): Promise<Record<string, string[]>> {
  const answers = await Promise.all(
    commands.map((c) =>
      bus.request(c.subject, c.params, { timeoutMs: 10_000 }).then(
        () => [c.label, 'ok'] as const,
        (err: unknown) => [c.label, asBatonError(err).code] as const,
      ),
    ),
  );
  const out: Record<string, string[]> = {};
  for (const [label, code] of answers) (out[label] ??= []).push(code);
  return out;
}

/** Each command twice, the second round in reverse order: duplicated and reordered. */
function duplicatedAndReordered(commands: AgentCommand[]): AgentCommand[] {
  return [...commands, ...[...commands].reverse()];
}

function capturingLog(lines: string[]): Log {
  const keep = (_fields: object, msg: string): void => void lines.push(msg);
  return { debug: () => undefined, info: keep, warn: keep, error: keep };
}

describe('NATS restarted mid-migration; agent commands duplicated, reordered, replayed late', () => {
  let ownNats: NatsServer;
  beforeAll(async () => {
    // Its own server: this test restarts it.
    ownNats = await NatsServer.start({ jetstream: true });
  });
  afterAll(async () => {
    await ownNats?.close();
  });

  it(
    'NATS down mid-send and restarted at commit costs only time; every earlier command replayed afterwards, duplicated and reordered, is refused STALE_TOKEN and changes nothing',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [ownNats.url] });
      const log: string[] = [];
      const { coordinator } = await mc.addCoordinator('coord-1', capturingLog(log), { sendTimeoutMs: 3_000 });
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const vm = await mc.startVm('host-a', 'n1', ['n1-root.img', 'n1-data.img']);
      await waitFor(() => checkDisk(mc.disk('n1-root.img')).length > 0, { what: 'n1 writing on host-a', deadlineMs: 5_000 });
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_000 });

      // M1: NATS goes down while the source sends, and stays down until the coordinator has given
      // up waiting for the perform's reply (it went nowhere): then it comes back on the same port.
      const m1 = await coordinator.migrate({ vm: 'n1', to: 'host-b' });
      await watch.phase(m1.id, 'performing');
      await waitFor(async () => (await mc.driver('host-a').find(vm.uuid))?.state === 'paused', { what: 'n1 paused for the send', deadlineMs: 5_000, intervalMs: 5 });
      const down = monoNow();
      await ownNats.stop();
      await waitFor(() => log.some((l) => l.startsWith(`perform of migration ${m1.id} did not go through`)), { what: 'the coordinator to give the perform up', deadlineMs: 10_000 });
      await ownNats.start();
      const outageMs = monoNow() - down;
      const r1 = await watch.settled(m1.id, 30_000);
      expect(r1.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1], 'host-b');
      figure('F-mig-3 NATS down mid-send', {
        outcome: r1.phase,
        outageMs: Math.round(outageMs),
        migrationMs: Math.round(r1.timeline.at(-1)!.atMs - r1.timeline[0]!.atMs),
        stepsSentAgain: log.filter((l) => l.includes('sending it again')).map((l) => l.split(' of migration')[0]),
      });

      await using bus = await Bus.connect(BusConfigSchema.parse({ servers: [ownNats.url], cluster: mc.cluster }), 'replayer');
      const m1Commands = agentCommands(bus, watch.versions(m1.id));
      expect(m1Commands.map((c) => c.params.key.step)).toEqual(['prepare', 'perform', 'resume', 'confirm']);
      const leasesBefore = await leaseState(conn, r1);

      // Right after M1: prepare and perform carry revisions older than the commit; resume and
      // confirm carry the commit itself, but M1 has ended and waits for nothing: all refused.
      const afterM1 = await replay(bus, duplicatedAndReordered(m1Commands));
      figure('F-mig-3 late commands after the migration ended', { answers: afterM1 });
      expect(afterM1).toEqual(Object.fromEntries(m1Commands.map((c) => [c.label, ['STALE_TOKEN', 'STALE_TOKEN']])));
      expect(await leaseState(conn, r1)).toEqual(leasesBefore);
      await expectSettledVm(mc, conn, vm, [r1], 'host-b');

      // M2 moves the VM back, NATS restarted (stop, start) the moment it is committed, while the
      // resume is on its way; then every command of M1 and M2 arrives late: every one is refused,
      // whatever its order.
      const m2 = await coordinator.migrate({ vm: 'n1', to: 'host-a' });
      await watch.phase(m2.id, 'committed');
      const restartedAt = monoNow();
      await ownNats.restart();
      const restartMs = monoNow() - restartedAt;
      const r2 = await watch.settled(m2.id, 30_000);
      expect(r2.phase).toBe('done');
      figure('F-mig-3 NATS restarted at commit', { outcome: r2.phase, restartMs: Math.round(restartMs), migrationMs: Math.round(r2.timeline.at(-1)!.atMs - r2.timeline[0]!.atMs) });
      const m2Commands = agentCommands(bus, watch.versions(m2.id));
      const late = [...m1Commands, ...m2Commands];
      const leasesAfterM2 = await leaseState(conn, r2);
      const afterM2 = await replay(bus, duplicatedAndReordered(late));
      figure('F-mig-3 late commands after the VM moved on', { answers: afterM2 });
      expect.soft(afterM2, 'every late command refused STALE_TOKEN').toEqual(Object.fromEntries(late.map((c) => [c.label, ['STALE_TOKEN', 'STALE_TOKEN']])));
      // Whatever the answers, nothing may have changed.
      expect(await leaseState(conn, r2)).toEqual(leasesAfterM2);
      await expectSettledVm(mc, conn, vm, [r1, r2], 'host-a');
    },
    90_000,
  );

  it(
    'commands of closed migrations arriving during a later migration’s send are refused STALE_TOKEN and touch neither copy',
    async () => {
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [ownNats.url] });
      const { coordinator } = await mc.addCoordinator();
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      await using bus = await Bus.connect(BusConfigSchema.parse({ servers: [ownNats.url], cluster: mc.cluster }), 'replayer');
      const vm = await mc.startVm('host-a', 'n2', ['n2-root.img']);
      await waitFor(() => checkDisk(mc.disk('n2-root.img')).length > 0, { what: 'n2 writing on host-a', deadlineMs: 5_000 });
      const m1 = await coordinator.migrate({ vm: 'n2', to: 'host-b' });
      const r1 = await watch.settled(m1.id);
      const m2 = await coordinator.migrate({ vm: 'n2', to: 'host-a' });
      const r2 = await watch.settled(m2.id);
      expect([r1.phase, r2.phase]).toEqual(['done', 'done']);
      // The last steps of M1 and M2 (resume, confirm), as a deposed leader or a slow network could
      // still deliver them: each names a host that is a party to M3.
      const late = [...agentCommands(bus, watch.versions(m1.id)), ...agentCommands(bus, watch.versions(m2.id))].filter((c) => c.params.key.step === 'resume' || c.params.key.step === 'confirm');

      // M3, host-a → host-b, with a slow send: the source copy sits paused at switchover, the
      // destination's incoming copy waits; the late commands arrive now.
      await mc.driver('host-a').inject(vm.uuid, { sendDelayMs: 1_500 });
      const m3 = await coordinator.migrate({ vm: 'n2', to: 'host-b' });
      await watch.phase(m3.id, 'performing');
      await waitFor(async () => (await mc.copies(vm.uuid))['host-a'] === 'paused', { what: 'n2 paused for the send', deadlineMs: 5_000, intervalMs: 5 });
      // An agent handles a VM's commands one at a time: those for host-a are taken after the
      // send, while the source copy is paused with its state sent, the riskiest moment for a
      // confirm (destroy the copy that does not run) or a resume (unpause it).
      const answers = await replay(bus, late);
      figure('F-mig-3 late commands during a later send', { answers, phaseWhenAnswered: watch.latest(m3.id)!.phase });
      expect.soft(answers, 'every command of a closed migration refused STALE_TOKEN').toEqual(Object.fromEntries(late.map((c) => [c.label, ['STALE_TOKEN']])));

      const r3 = await watch.settled(m3.id, 20_000);
      expect(r3.phase).toBe('done');
      await expectSettledVm(mc, conn, vm, [r1, r2, r3], 'host-b');
    },
    60_000,
  );
});

// ---------------------------------------------------------------------------------------------
// 4. The etcd leader killed during the commit transaction.
// ---------------------------------------------------------------------------------------------

/**
 * A host of the cluster's own (host-d, in this process, with no agent) asking etcd itself for
 * each disk's exclusive lease again and again: the most direct third party there is. Every answer
 * is kept; a grant is a win (S6 broken) and is released at once so the VM is not starved.
 */
class EtcdContender {
  readonly answers = new Map<string, number>();
  readonly wins: { disk: string; token: number; at: number }[] = [];
  private readonly running: Promise<void>;
  private readonly stopping = new AbortController();

  private constructor(
    private readonly table: LeaseTable,
    private readonly session: Awaited<ReturnType<typeof openSession>>,
    private readonly disks: () => string[],
  ) {
    this.running = this.loop();
  }

  static async start(conn: EtcdConnection, disks: () => string[]): Promise<EtcdContender> {
    const session = await openSession(conn, 'host-d', { lockspaces: ['images'] });
    return new EtcdContender(new LeaseTable(conn, 'host-d'), session, disks);
  }

  get attempts(): number {
    return [...this.answers.values()].reduce((a, b) => a + b, 0);
  }

  private async loop(): Promise<void> {
    const owner = { uuid: randomUUID(), name: 'etcd-thief' };
    while (!this.stopping.signal.aborted) {
      for (const disk of this.disks()) {
        const code = await this.table.grant(this.session, [{ lockspace: 'images', identity: disk, mode: 'exclusive', owner }]).then(
          async (leases) => {
            this.wins.push({ disk, token: leases[0]!.token, at: monoNow() });
            await this.table.release(leases).catch(() => undefined);
            return 'granted';
          },
          (err: unknown) => asBatonError(err).code,
        );
        this.answers.set(code, (this.answers.get(code) ?? 0) + 1);
      }
      // A short breath between rounds, bounded by the stop signal (not a sleep a test waits on).
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 2);
        this.stopping.signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
      });
    }
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.running;
    await this.session.close({ revoke: true }).catch(() => undefined);
  }
}

type EtcdKill = 'before the commit is sent' | 'after the commit is applied';

/**
 * Migrations of one VM back and forth, the etcd leader SIGKILLed inside each one's commit step
 * (`kill` says where), a direct etcd contender asking for the VM's disks throughout. After each:
 * the migration ended, its history is clean, the member comes back. Returns the figures.
 */
async function etcdLeaderKills(cluster: EtcdCluster, kills: EtcdKill[]): Promise<void> {
  await using mc = await MigrationCluster.start({ etcd: cluster.endpoints, nats: [nats.url], ttlSeconds: 5 });
  // The coordinator reaches each member through a link that holds replies back, so the kill lands
  // inside its commit step: before the transaction is sent, or after it is applied and before the
  // coordinator has heard. A killed member's link then stays silent, as a dead host's would.
  const links: TcpProxy[] = [];
  await using _links = disposer(() => Promise.all(links.map((l) => l.close())));
  for (const m of cluster.members) {
    const link = await TcpProxy.start({ target: { port: m.clientPort } });
    link.toClient.delay(REPLY_DELAY_MS);
    links.push(link);
  }
  const log: string[] = [];
  const { coordinator } = await mc.addCoordinator('coord-1', capturingLog(log), { etcd: { endpoints: links.map((l) => `http://${l.hostPort}`) } });
  await mc.leader();
  await using conn = connectEtcd(cluster.endpoints, 5, mc.cluster);
  await using watch = await ClusterWatch.start(conn);
  const vm = await mc.startVm('host-a', 'e1', ['e1-root.img', 'e1-data.img']);
  const disks = vm.locks.map((l) => l.resource);
  await waitFor(() => checkDisk(disks[0]!).length > 0, { what: 'e1 writing on host-a', deadlineMs: 5_000 });
  await using contenderConn = connectEtcd(cluster.endpoints, 5, mc.cluster);
  const contender = await EtcdContender.start(contenderConn, () => disks);
  await using _contender = disposer(() => within(contender.stop(), 10_000, 'the etcd contender'));

  const records: MigrationRecord[] = [];
  let host = 'host-a';
  for (const kind of kills) {
    const to = host === 'host-a' ? 'host-b' : 'host-a';
    const leader = await cluster.leader();
    const retriesBefore = log.filter((l) => l.startsWith('commit of migration')).length;
    let killedAt = 0;
    const kill = (): void => {
      killedAt = monoNow();
      leader.process!.kill('SIGKILL');
    };
    const started = await coordinator.migrate({ vm: 'e1', to });
    if (kind === 'before the commit is sent') {
      // The coordinator learns that `sent` is saved only REPLY_DELAY_MS after etcd applied it.
      await watch.on((r) => r.id === started.id && r.phase === 'sent', kill, 'sent');
    } else {
      await watch.phase(started.id, 'sent');
      await waitFor(async () => (await leaseState(conn, started)).every((s) => s.lease?.grant === `${started.id}:commit`), { what: 'the commit applied', deadlineMs: 10_000, intervalMs: 1 });
      kill();
    }
    await within(leader.process!.exited, 5_000, `etcd ${leader.memberName} to exit`);
    const record = await ended(mc, conn, watch, started.id, 20_000, log);
    const newLeader = await cluster.leader();
    records.push(record);
    // Committed → the VM runs on the destination; rolled back → on the source (both are correct).
    host = record.phase === 'done' ? to : host;
    expect(['done', 'aborted']).toContain(record.phase);
    await expectSettledVm(mc, conn, vm, records, host);
    figure('F-mig-4 etcd leader killed', {
      kill: kind,
      killed: leader.memberName,
      newLeader: newLeader.memberName,
      outcome: record.phase,
      commitSentAgain: log.filter((l) => l.startsWith('commit of migration')).length - retriesBefore,
      endedAfterKillMs: Math.round(watch.versions(started.id).at(-1)!.at - killedAt),
      timeline: record.timeline.map((e) => e.phase).join(' '),
    });
    // The member comes back (same ports, same data) before the next round, so each round starts
    // from a full cluster and kills a leader of three.
    await leader.start();
    await waitFor(async () => (await Promise.all(cluster.members.map((m) => m.status().then(() => true, () => false)))).every(Boolean), { what: 'three healthy members', deadlineMs: 15_000 });
  }
  await within(contender.stop(), 10_000, 'the etcd contender');
  figure('F-mig-4 etcd contender', { attempts: contender.attempts, answers: Object.fromEntries(contender.answers), wins: contender.wins });
  // S6: the handoff never leaves the lease key free, so a grant straight from etcd never succeeds.
  expect(contender.wins).toEqual([]);
  expect(contender.answers.get('RESOURCE_BUSY') ?? 0).toBeGreaterThan(0);
}

describe('etcd leader killed during the commit transaction (3-member etcd)', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await EtcdCluster.start();
  });
  afterAll(async () => {
    await cluster?.close();
  });

  it('killed before the commit is sent: each migration completes or rolls back, S1–S6 hold, a third party asking etcd never wins', () => etcdLeaderKills(cluster, ['before the commit is sent', 'before the commit is sent']), 90_000);

  it('killed after the commit is applied, before the coordinator hears: each migration completes, S1–S6 hold, a third party asking etcd never wins', () => etcdLeaderKills(cluster, ['after the commit is applied', 'after the commit is applied']), 90_000);
});

// ---------------------------------------------------------------------------------------------
// 5. A third party asking for the VMs' disks throughout 200 migrations.
// ---------------------------------------------------------------------------------------------

const MIGRATIONS = 200;
const VMS = 4;

describe('a third party asking for the disks throughout many migrations', () => {
  it(
    `never wins during ${MIGRATIONS} migrations of ${VMS} VMs back and forth, and every migration completes`,
    async () => {
      // host-c is the contender's host: an agent of the same cluster, on the same lock directory.
      await using mc = await MigrationCluster.start({ etcd: etcd.endpoints, nats: [nats.url], hosts: ['host-a', 'host-b', 'host-c'] });
      const log: string[] = [];
      const { coordinator } = await mc.addCoordinator('coord-1', capturingLog(log));
      await mc.leader();
      await using conn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      await using watch = await ClusterWatch.start(conn);
      const vms: { vm: HostedVm; home: string }[] = [];
      for (let i = 0; i < VMS; i++) {
        const home = i % 2 === 0 ? 'host-a' : 'host-b';
        vms.push({ vm: await mc.startVm(home, `t${i}`, [`t${i}-root.img`, `t${i}-data.img`]), home });
      }
      const disks = vms.flatMap(({ vm }) => vm.locks.map((l) => l.resource));

      // Two third parties: an owner on host-c asking its agent (etcd grant, then the local lock),
      // and host-d asking etcd directly. Each asks for one disk after another, without pause.
      const viaAgent = await Contender.on(mc.agent('host-c'), 'thief');
      const stop = new AbortController();
      const agentLoop = (async () => {
        for (let i = 0; !stop.signal.aborted; i++) {
          const a = await viaAgent.try(disks[i % disks.length]!);
          if (a.token !== undefined) await viaAgent.release();
        }
      })();
      await using contenderConn = connectEtcd(etcd.endpoints, 3, mc.cluster);
      const viaEtcd = await EtcdContender.start(contenderConn, () => disks);
      await using _contenders = disposer(async () => {
        stop.abort();
        await within(agentLoop, 10_000, 'the host-c contender');
        await within(viaEtcd.stop(), 10_000, 'the etcd contender');
      });

      const t0 = monoNow();
      let started = 0;
      const byVm = new Map<string, MigrationRecord[]>(vms.map(({ vm }) => [vm.uuid, []]));
      // Each VM goes back and forth, one migration after another; the VMs migrate concurrently.
      // The first failure stops every loop before the next migration, and all are awaited, so no
      // migration is still being started while the cluster is torn down.
      const halt = new AbortController();
      const loops = vms.map(async ({ vm, home }) => {
        let host = home;
        while (started < MIGRATIONS && !halt.signal.aborted) {
          started++;
          const to = host === 'host-a' ? 'host-b' : 'host-a';
          try {
            const record = await ended(mc, conn, watch, (await coordinator.migrate({ vm: vm.uuid, to })).id, 30_000, log);
            expect(record.phase, `${vm.name} ${host} → ${to}`).toBe('done');
            byVm.get(vm.uuid)!.push(record);
          } catch (err) {
            halt.abort(err);
            throw err;
          }
          host = to;
        }
      });
      const outcomes = await Promise.allSettled(loops);
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed) throw failed.reason;
      const elapsedMs = monoNow() - t0;
      stop.abort();
      await within(agentLoop, 10_000, 'the host-c contender');
      await within(viaEtcd.stop(), 10_000, 'the etcd contender');

      const all = [...byVm.values()].flat();
      expect(all).toHaveLength(MIGRATIONS);
      const during = (at: number): boolean => all.some((r) => r.timeline[0]!.atMs <= at && at <= r.timeline.at(-1)!.atMs);
      const handoffs = all.map((r) => [r.timeline.find((e) => e.phase === 'performing')!.atMs, r.timeline.find((e) => e.phase === 'confirming')!.atMs] as const);
      const agentAnswers = new Map<string, number>();
      for (const a of viaAgent.attempts) agentAnswers.set(a.error?.code ?? 'granted', (agentAnswers.get(a.error?.code ?? 'granted') ?? 0) + 1);
      figure('F-mig-5 third party during migrations', {
        migrations: all.length,
        vms: VMS,
        elapsedMs: Math.round(elapsedMs),
        perMigrationMs: Math.round(elapsedMs / all.length),
        viaAgent: { attempts: viaAgent.attempts.length, duringMigrations: viaAgent.attempts.filter((a) => during(a.sentAt)).length, sentFromSendToResume: viaAgent.attempts.filter((a) => handoffs.some(([from, to]) => from <= a.sentAt && a.sentAt <= to)).length, answers: Object.fromEntries(agentAnswers) },
        viaEtcd: { attempts: viaEtcd.attempts, answers: Object.fromEntries(viaEtcd.answers) },
      });
      expect(viaAgent.attempts.filter((a) => a.token !== undefined), 'grants to host-c').toEqual([]);
      expect(viaEtcd.wins, 'grants to host-d').toEqual([]);
      expect(viaAgent.attempts.length).toBeGreaterThan(MIGRATIONS);
      expect(viaEtcd.attempts).toBeGreaterThan(MIGRATIONS);
      for (const { vm, home } of vms) {
        const records = byVm.get(vm.uuid)!;
        const host = records.length % 2 === 0 ? home : home === 'host-a' ? 'host-b' : 'host-a';
        const epochs = await expectSettledVm(mc, conn, vm, records, host);
        for (const disk of epochs) expect(disk).toHaveLength(records.length + 1);
      }
    },
    300_000,
  );
});
