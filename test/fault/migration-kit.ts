import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import {
  asBatonError,
  BatonError,
  isSettled,
  nextStep,
  type ErrorBody,
  type HostedVm,
  type LeaseValue,
  type MigrationPhase,
  type MigrationRecord,
  type MigrationStep,
} from '@baton/core';
import { LeaseTable, storedMigration, type EtcdConnection, type HandoffMarker } from '@baton/etcd';
import {
  checkRecords,
  CoordinatorProcess,
  describeError,
  httpJson,
  MigrationCluster,
  monoNow,
  openSession,
  readDiskRecords,
  waitFor,
  within,
  writtenUnder,
  type CoordinatorOverrides,
  type DiskEpoch,
  type ManagedProcess,
  type MigrationClusterOptions,
} from '../support/index.js';

/**
 * The kit of the live-migration fault tests (test/fault/migration-*.test.ts). Live migration under faults (DESIGN §6, S1–S6), with real processes throughout: agents with sim
 * VMs that write `vm host token seq t` to their disks through a fence guard, etcd, NATS, and
 * coordinators as `baton coordinator` processes, driven over their HTTP API. Every history is checked
 * the same way at the end (expectSettledVm): the VM has exactly one running copy, where the
 * migration's outcome says, and no other; its leases are that host's with no handoff marker left; it writes
 * under the lease's token; and each disk's contents pass S1/S2 (checkDisk), every epoch written
 * by the one host that legitimately held that token (the source's grant, the destination's
 * commit, the source's give-back), so nothing a paused, fenced or superseded copy wrote was
 * accepted.
 */

/** Figures go to stdout as JSON lines, for the report. */
export function figure(name: string, values: Record<string, unknown>): void {
  console.log(JSON.stringify({ figure: name, ...values }));
}

export function disposer(fn: () => Promise<unknown>): AsyncDisposable {
  let done: Promise<void> | undefined;
  // Idempotent: a test may dispose early (to read what was collected) and again at scope exit.
  return { [Symbol.asyncDispose]: () => (done ??= fn().then(() => undefined)) };
}


// ---------------------------------------------------------------------------------------------
// What the test sees of the cluster: every version of every migration record, and the election.
// ---------------------------------------------------------------------------------------------

export interface SeenRecord {
  /** When the test's watch delivered it (host monotonic ms, the clock of records and disks). */
  at: number;
  record: MigrationRecord;
}

export interface SeenKey {
  at: number;
  key: string;
}

/**
 * An etcd watch of the cluster's migration records and coordinator candidacies, from the test's
 * own connection (not through any proxy a test faults). Hooks run synchronously on each record
 * version, so a fault can be landed the moment a phase is written.
 */
export class ClusterWatch implements AsyncDisposable {
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
          const seen = { at: monoNow(), record: storedMigration(kv).record };
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
export async function electionLine(conn: EtcdConnection): Promise<{ key: string; id: string }[]> {
  const res = await conn.range(ClusterWatch.electionPrefix(conn), { prefix: true });
  return [...res.kvs]
    .sort((a, b) => (BigInt(a.create_revision) < BigInt(b.create_revision) ? -1 : 1))
    .map((kv) => ({ key: kv.key.toString(), id: (JSON.parse(kv.value.toString()) as { id: string }).id }));
}

/** Each resource of a migration as etcd has it now: its exclusive lease (with its token) and its handoff marker. */
export async function leaseState(conn: EtcdConnection, record: MigrationRecord): Promise<{ resource: string; lease?: LeaseValue & { token: number }; marker?: HandoffMarker }[]> {
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
export function runningEvents(mc: MigrationCluster, host: string, uuid: string): number {
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
export function stepEffect(mc: MigrationCluster, conn: EtcdConnection, record: MigrationRecord): { step: MigrationStep; done: () => Promise<boolean> } {
  const command = nextStep(record);
  if (!command) throw new Error(`migration ${record.id} is closed`);
  const { id, vm, source, destination } = record;
  const leases = () => leaseState(conn, record);
  const state = async (host: string) => (await mc.driver(host).find(vm.uuid))?.state;
  // Only restore's effect is read against the start: the source's event log is read for it alone.
  const baseline = command.step === 'restore' ? runningEvents(mc, source, vm.uuid) : 0;
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
export async function ended(mc: MigrationCluster, watch: ClusterWatch, id: string, deadlineMs: number, said: () => string[] = () => []): Promise<MigrationRecord> {
  try {
    return await watch.settled(id, deadlineMs);
  } catch (err) {
    const stuck = watch.latest(id);
    if (!stuck) throw err;
    // A report, not a probe: etcd may still be failing over, and what it cannot read it says so.
    const leases = await leaseState(watch.conn, stuck).then(
      (states) => states.map((s) => `${s.lease?.host}:${s.lease?.grant}${s.marker ? `+marker(${s.marker.step})` : ''}`).join(', '),
      (e: unknown) => `unreadable (${describeError(e)})`,
    );
    const last = said().filter((l) => l.includes(id)).slice(-3).join(' | ');
    throw new Error(
      `migration ${id} never ended: the record stays in ${stuck.phase} (${stuck.timeline.map((e) => e.phase).join(' ')}); leases ${leases}; ` +
        `copies ${JSON.stringify(await mc.copies(stuck.vm.uuid))}${last ? `; the coordinator said: ${last}` : ''}`,
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
export function legitimateWriters(records: MigrationRecord[]): Map<string, Map<number, string>> {
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
 * one running copy, on `host`, and no other copy; its leases are that host's, with no handoff marker left; it writes
 * under those leases' tokens; and every epoch on every disk passes S1/S2 and was written by the
 * host that held that token. Returns the epochs per disk.
 */
export async function expectSettledVm(
  mc: MigrationCluster,
  conn: EtcdConnection,
  vm: { uuid: string; name: string },
  records: MigrationRecord[],
  host: string,
): Promise<DiskEpoch[][]> {
  expect(records.every(isSettled), 'every migration ended').toBe(true);
  expect(await mc.copies(vm.uuid), 'exactly one copy of the VM, running').toEqual({ [host]: 'running' });
  const state = await leaseState(conn, records.at(-1)!);
  const writers = legitimateWriters(records);
  const out: DiskEpoch[][] = [];
  for (const s of state) {
    expect(s.marker, `no handoff marker left on ${s.resource}`).toBeUndefined();
    expect(s.lease?.host, `the lease of ${s.resource} is ${host}'s`).toBe(host);
    const token = s.lease!.token;
    // S3: the copy that runs writes, and under the lease it holds now.
    await writtenUnder(s.resource, token);
    const lines = readDiskRecords(s.resource);
    const epochs = checkRecords(lines, s.resource);
    for (const e of epochs) {
      expect(e.vm).toBe(vm.name);
      expect(`${e.host} wrote under token ${e.token}`).toBe(`${writers.get(s.resource)!.get(e.token) ?? 'nobody'} wrote under token ${e.token}`);
    }
    expect(epochs.at(-1)).toMatchObject({ host, token });
    // The guest's counter travels with its state: a copy that wrote after its state was sent (a
    // source unpaused at switchover) shows as the counter going back when the destination starts.
    const back = lines.findIndex((r, i) => i > 0 && r.seq <= lines[i - 1]!.seq);
    expect(back < 0 ? 'the counter only rises' : `${lines[back]!.host} wrote seq ${lines[back]!.seq} after ${lines[back - 1]!.host} wrote seq ${lines[back - 1]!.seq}`, `seq on ${s.resource}`).toBe('the counter only rises');
    out.push(epochs);
  }
  return out;
}



/**
 * The replicas' replies (etcd and NATS) are held this long on the way back to them, so that once
 * the test has seen a step take effect, the leader that issued it cannot yet know. The leader-kill
 * test holds the replies outright from the moment the phase is seen for most steps; the delay is
 * the margin only where it cannot (begin, whose effect must be seen; resume, sent before
 * `committed` is saved; the commit in the `resumeSent` kill): seeing that must fit in it.
 */
export const REPLY_DELAY_MS = 150;



/**
 * A host of the cluster's own (host-d, in this process, with no agent) asking etcd itself for
 * each disk's exclusive lease again and again: the most direct third party there is. Every answer
 * is kept; a grant is a win (S6 broken) and is released at once so the VM is not starved.
 */
export class EtcdContender implements AsyncDisposable {
  readonly answers = new Map<string, number>();
  readonly wins: { disk: string; token: number; at: number }[] = [];
  /** When each attempt was sent (host monotonic ms, the clock of the records' timelines). */
  readonly sentAt: number[] = [];
  private readonly running: Promise<void>;
  private readonly stopping = new AbortController();
  private stopped: Promise<void> | undefined;

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
        this.sentAt.push(monoNow());
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
      await delay(2, undefined, { signal: this.stopping.signal }).catch(() => undefined);
    }
  }

  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping.abort();
      await this.running;
      await this.session.close({ revoke: true }).catch(() => undefined);
    })();
    return this.stopped;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return within(this.stop(), 10_000, 'the etcd contender');
  }
}

/**
 * SIGSTOP `proc` the moment migration `id` reaches `phase` (from the watch's own callback, so
 * before anything can follow the phase), and resolve once every thread of it has stopped.
 */
export async function freezeAt(watch: ClusterWatch, id: string, phase: MigrationPhase, proc: ManagedProcess): Promise<void> {
  let stopped: Promise<void> | undefined;
  await watch.on((r) => r.id === id && r.phase === phase, () => (stopped = proc.pause()), phase);
  await stopped;
}

/**
 * A fault test's coordinator: one replica as a real process (`baton coordinator`), as it runs in
 * production, driven over its HTTP API as the CLI drives it; what it logs is read from its output.
 */
export class RigCoordinator {
  constructor(readonly process: CoordinatorProcess) {}

  /** `POST /v1/migrations`: the record as accepted; a refusal throws its error, code and all. */
  async migrate(req: { vm: string; to: string }): Promise<MigrationRecord> {
    const res = await httpJson<MigrationRecord | { error: ErrorBody }>(`${this.process.url}/v1/migrations`, { method: 'POST', body: req, timeoutMs: 10_000 });
    if ('error' in res.body) throw BatonError.fromBody(res.body.error);
    return res.body;
  }

  /** `POST /v1/vms`: a VM started on `host` with the cluster's `disks`, as the coordinator answers it. */
  async startVm(mc: MigrationCluster, host: string, name: string, disks: string[]): Promise<HostedVm> {
    const body = { host, uuid: randomUUID(), name, disks: disks.map((d) => ({ path: mc.disk(d) })) };
    const res = await httpJson<HostedVm | { error: ErrorBody }>(`${this.process.url}/v1/vms`, { method: 'POST', body, timeoutMs: 10_000 });
    if ('error' in res.body) throw BatonError.fromBody(res.body.error);
    return res.body;
  }

  /** The messages it has logged so far, over all its lives. */
  readonly said = (): string[] => this.process.lives.flatMap((p) => p.events().map((e) => String(e.msg)));
}

/** One fault test's cluster: its one coordinator (`coord-1`, leading), a plain etcd connection and the record watch on it. */
export interface FaultRig extends AsyncDisposable {
  mc: MigrationCluster;
  coordinator: RigCoordinator;
  conn: EtcdConnection;
  watch: ClusterWatch;
}

/** A `FaultRig` on `options`; disposed watch first, then the connection, the coordinator, the cluster. */
export async function faultRig(options: MigrationClusterOptions, coordinator: { overrides?: CoordinatorOverrides } = {}): Promise<FaultRig> {
  await using stack = new AsyncDisposableStack();
  const mc = stack.use(await MigrationCluster.start(options));
  const proc = stack.use(await CoordinatorProcess.start(mc.coordinatorConfig('coord-1', coordinator.overrides)));
  await waitFor(async () => (await httpJson<{ leader?: boolean }>(`${proc.url}/readyz`)).body.leader === true, { what: 'coord-1 to lead', deadlineMs: 10_000, intervalMs: 20 });
  const conn = stack.use(mc.connectEtcd());
  const watch = stack.use(await ClusterWatch.start(conn));
  const owned = stack.move();
  return { mc, coordinator: new RigCoordinator(proc), conn, watch, [Symbol.asyncDispose]: () => owned.disposeAsync() };
}

/** A VM started on `host` with `disks`, once it has written its first disk under its grant. */
export async function writingVm({ mc, coordinator }: FaultRig, host: string, name: string, disks: string[]): Promise<HostedVm> {
  const vm = await coordinator.startVm(mc, host, name, disks);
  await writtenUnder(mc.disk(disks[0]!), vm.locks[0]!.token);
  return vm;
}
