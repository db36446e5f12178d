import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import {
  BatonError,
  cancelMigration,
  canonicalUuid,
  compareByStart,
  isSettled,
  leaseTiming,
  newMigration,
  systemClock,
  wallTimeIso,
  type ClusterLease,
  type DefineAnswer,
  type DestroyedVm,
  type HostedVm,
  type MigrationRecord,
  type VmDefinition,
  type VmSpecInput,
  type MonotonicClock,
} from '@baton/core';
import { Bus } from '@baton/bus';
import { ClusterView, Election, EtcdConnection, HostSession, MigrationStore, storedMigration, type Leadership, type StoredMigration } from '@baton/etcd';
import type { CoordinatorConfig } from './config.js';
import type { Log } from './log.js';
import { MigrationHistory } from './history.js';
import { CoordinatorMetrics } from './http/metrics.js';
import { AgentSteps } from './saga/agent-steps.js';
import { EtcdSteps } from './saga/etcd-steps.js';
import { MigrationDriver } from './saga/migration-driver.js';
import type { MigrationLimits } from './saga/migration-slots.js';

export interface CoordinatorOptions {
  config: CoordinatorConfig;
  log: Log;
  clock?: MonotonicClock;
  /** This replica's HTTP address, as followers and the CLI reach it (known once the server listens). */
  url: string;
}

/** A record found by id: in etcd (with its revision), or in the history once it left etcd. */
export type FoundMigration = StoredMigration | { record: MigrationRecord; revision?: undefined };

/** What a candidacy tells the other replicas and the CLI. */
export interface ReplicaInfo {
  id: string;
  url: string;
}

export interface MigrateRequest {
  /** The VM's uuid or name. */
  vm: string;
  to: string;
}

/** A definition change: applied to the VM now, or staged in its migration's record, applied when that ends. */

const ELECTION = 'coordinator';

/**
 * One coordinator replica. All replicas campaign; the leader drives every open migration record
 * (resuming those an earlier leader left the moment it is elected) and takes new migrations.
 * Leadership is an AbortSignal: when it aborts, every drive stops before its next step, and the
 * records wait, unchanged, for the next leader. Followers read records and the cluster from etcd.
 */
export class Coordinator implements AsyncDisposable {
  readonly conn: EtcdConnection;
  readonly store: MigrationStore;
  readonly view: ClusterView;
  readonly metrics = new CoordinatorMetrics(() => this.driver.queued);
  readonly history: MigrationHistory;
  private readonly driver: MigrationDriver;
  private readonly agents: AgentSteps;
  private readonly clock: MonotonicClock;
  private readonly log: Log;
  private readonly stop = new AbortController();
  private leadership: Leadership | undefined;
  private campaigning: Promise<void> | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly opts: CoordinatorOptions,
    private readonly bus: Bus,
  ) {
    const { config } = opts;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.log;
    this.conn = new EtcdConnection(config.etcd);
    this.store = new MigrationStore(this.conn);
    this.view = new ClusterView(this.conn);
    this.agents = new AgentSteps(bus, { stepMs: config.stepTimeoutMs, sendMs: config.sendTimeoutMs });
    this.history = new MigrationHistory({ bus, store: this.store, config: config.history, cluster: config.etcd.cluster, log: this.log });
    this.driver = new MigrationDriver({
      store: this.store,
      etcd: new EtcdSteps(this.conn),
      agents: this.agents,
      clock: this.clock,
      log: this.log,
      retryMs: config.retryMs,
      limits: config.limits,
      onSaved: (record, previous) => this.saved(record, previous),
    });
  }

  /** How many migrations run at once; the others wait in `begun` (config `limits`). */
  get limits(): MigrationLimits {
    return this.opts.config.limits;
  }

  static async start(opts: CoordinatorOptions): Promise<Coordinator> {
    // A publish NATS refuses (events, the history) is reported on the connection, not to the call: into the log with its code.
    const bus = await Bus.connect(opts.config.nats, `baton-coordinator ${opts.config.id}`, { onError: (err) => opts.log.error({ code: err.code, details: err.details }, err.message) });
    const coordinator = new Coordinator(opts, bus);
    coordinator.campaigning = coordinator.campaignForever();
    return coordinator;
  }

  get id(): string {
    return this.opts.config.id;
  }

  /** The cluster's name: its etcd keys and NATS subjects are under it. */
  get cluster(): string {
    return this.opts.config.etcd.cluster;
  }

  get isLeader(): boolean {
    return this.leadership !== undefined && !this.leadership.signal.aborted;
  }

  /** The replicas in line, the leader first. */
  async replicas(): Promise<ReplicaInfo[]> {
    return (await new Election(this.conn, ELECTION).candidates()).map((v) => JSON.parse(v) as ReplicaInfo);
  }

  async leader(): Promise<ReplicaInfo | undefined> {
    return (await this.replicas())[0];
  }

  /** Campaign, lead until leadership is lost, campaign again: until closed. */
  private async campaignForever(): Promise<void> {
    const { config } = this.opts;
    const signal = this.stop.signal;
    while (!signal.aborted) {
      let session: HostSession | undefined;
      try {
        session = await HostSession.open({
          conn: this.conn,
          clock: this.clock,
          timing: leaseTiming(config.etcd.ttlSeconds),
          log: { info: (f, m) => this.log.info(f, m), warn: (f, m) => this.log.warn(f, m), error: (f, m) => this.log.error(f, m) },
          onPhase: () => undefined,
        });
        const leadership = await Election.campaign({ conn: this.conn, session, name: ELECTION, value: JSON.stringify({ id: this.id, url: this.opts.url } satisfies ReplicaInfo), signal });
        await this.lead(leadership);
      } catch (err) {
        if (signal.aborted) break;
        this.log.warn({ err: (err as Error).message }, 'campaign interrupted; campaigning again');
        await delay(leaseTiming(config.etcd.ttlSeconds).keepaliveMs, undefined, { signal }).catch(() => undefined);
      } finally {
        this.leadership = undefined;
        this.metrics.leader.set(0);
        await session?.close({ revoke: true }).catch(() => undefined);
      }
    }
  }

  /**
   * Lead: drive every unsettled record at once (open, or closed with a staged definition still
   * to apply), then take new requests, until leadership is lost. Requests are taken only once
   * every such record is driven here, so a definition for a VM whose record still holds a staged
   * one is staged after it, never applied before it.
   */
  private async lead(leadership: Leadership): Promise<void> {
    // Those under way first, so the limits count them before any waiting one is admitted; then
    // the waiting ones (begun) in the order they were asked for (by the wall clock of the replicas
    // that took them: a queue's order, no lease decision).
    const waiting = (s: StoredMigration): number => Number(s.record.phase === 'begun');
    const all = await this.store.list();
    const open = all.filter((s) => !isSettled(s.record)).sort((x, y) => waiting(x) - waiting(y) || compareByStart(x.record, y.record));
    this.log.info({ id: this.id, resuming: open.map((s) => `${s.record.id}:${s.record.phase}`) }, `leading; resuming ${open.length} open migration(s)`);
    for (const stored of open) this.track(stored, leadership.signal);
    const keeping = this.history.keep(leadership.signal, all.length - open.length);
    this.leadership = leadership;
    this.metrics.leader.set(1);
    const lost = Promise.withResolvers<void>();
    if (leadership.signal.aborted) lost.resolve();
    else leadership.signal.addEventListener('abort', () => lost.resolve(), { once: true });
    await lost.promise;
    this.log.warn({ id: this.id, reason: String((leadership.signal.reason as Error | undefined)?.message ?? leadership.signal.reason) }, 'leadership lost; every migration stops before its next step');
    await Promise.allSettled([...this.driver.runs(), keeping]);
  }

  private track(stored: StoredMigration, signal: AbortSignal): void {
    const id = stored.record.id;
    if (this.driver.running(id)) return;
    void this.driver.drive(stored, signal).then(
      (done) => {
        this.log.info({ migration: id, phase: done.record.phase }, `migration ${id} ${done.record.phase}`);
        this.history.ended(signal);
      },
      (err: unknown) => {
        if (!signal.aborted) this.log.error({ migration: id, err: (err as Error).message }, `migration ${id} stopped: ${(err as Error).message}`);
      },
    );
  }

  private saved(record: MigrationRecord, previous?: MigrationRecord): void {
    this.metrics.saved(record, previous);
    this.history.saved(record);
  }

  /** This replica's leadership, or NOT_LEADER naming the leader. */
  private async leading(): Promise<Leadership> {
    const leadership = this.leadership;
    if (leadership && !leadership.signal.aborted) return leadership;
    const leader = await this.leader();
    throw new BatonError('NOT_LEADER', `replica ${this.id} is not the leader${leader ? `; ${leader.id} is, at ${leader.url}` : ''}`, { details: { leader: leader ?? null } });
  }

  /** A VM (uuid or name) by its leases in etcd, and the one host that holds them. */
  private async locate(asked: string): Promise<{ vm: MigrationRecord['vm']; host: string; leases: ClusterLease[] }> {
    const wanted = canonicalUuid(asked);
    const leases = (await this.view.leases()).filter((l) => l.owner.uuid === wanted || l.owner.name === asked);
    const vm = uniqueVm(asked, leases);
    const host = leases[0]!.host;
    if (leases.some((l) => l.host !== host)) throw new BatonError('INTERNAL', `VM ${asked} holds leases on several hosts`, { details: { hosts: [...new Set(leases.map((l) => l.host))] } });
    return { vm, host, leases };
  }

  /** Start a migration (leader only): the VM's exclusive leases, found in etcd, go from its host to `to`. */
  async migrate(req: MigrateRequest): Promise<MigrationRecord> {
    const leadership = await this.leading();
    const { vm, host: source, leases } = await this.locate(req.vm);
    // A closed record whose staged definition is not applied yet: a second migration would race its apply.
    const pending = this.driver.drivingFor(vm.uuid);
    if (pending !== undefined) throw new BatonError('MIGRATION_CONFLICT', `VM ${vm.name} has migration ${pending} still in flight or applying its staged definition`, { details: { vm: vm.uuid, migration: pending } });
    if (req.to === source) throw new BatonError('INVALID_REQUEST', `VM ${vm.name} already runs on ${source}`, { details: { vm: vm.uuid, host: source } });
    const shared = leases.find((l) => l.mode !== 'exclusive');
    if (shared) throw new BatonError('INVALID_REQUEST', `VM ${vm.name} holds a shared lease ("${shared.resource}"); only exclusive disks are handed off`, { details: { resource: shared.resource } });
    const destination = (await this.view.hosts()).find((h) => h.host === req.to);
    if (!destination || destination.ttlLeftSeconds < 0) throw new BatonError('UNAVAILABLE', `host ${req.to} has no live session`, { details: { host: req.to } });
    // The policy the leases were granted with; the source reports the one it runs the VM under when it sends it.
    const onLeaseLoss = leases.find((l) => l.owner.onLeaseLoss !== undefined)?.owner.onLeaseLoss;
    const record = newMigration(
      {
        id: randomUUID(),
        vm,
        source,
        destination: req.to,
        resources: leases.map((l) => ({ name: l.resource, lockspace: l.lockspace, mode: l.mode })),
        ...(onLeaseLoss === undefined ? {} : { onLeaseLoss }),
        startedAt: wallTimeIso(),
      },
      this.clock.now(),
    );
    const stored = await this.store.create(record, { leaderKey: leadership.key });
    this.saved(record);
    this.log.info({ migration: record.id, vm, source, destination: req.to, resources: record.resources.length }, `migration ${record.id}: ${vm.name} ${source} → ${req.to}`);
    this.track(stored, leadership.signal);
    return record;
  }

  /**
   * Cancel a migration (leader only; `virsh domjobabort`'s counterpart): before its commit it
   * rolls back and the VM stays on its source (answered once the record carrying the cancel is
   * saved); one already rolling back, or ended aborted, is answered as it is; one past its commit,
   * or done, is refused (MIGRATION_CONFLICT).
   */
  async cancel(id: string): Promise<MigrationRecord> {
    await this.leading();
    const driven = this.driver.cancel(id);
    if (driven) return driven;
    const { record } = await this.get(id);
    if (isSettled(record)) return cancelMigration(record, this.clock.now());
    // Open, and not driven here yet: a leader just elected is taking its records up.
    throw new BatonError('UNAVAILABLE', `migration ${id} is not under way on this leader yet; try again`, { details: { migration: id } });
  }

  /**
   * Change a VM's definition (leader only). A VM in flight gets it staged in its migration's
   * record (answered once that is saved), applied to the surviving copy when the migration ends;
   * any other VM gets it at once from the host that holds its leases.
   */
  async define(asked: string, definition: VmDefinition): Promise<DefineAnswer> {
    await this.leading();
    let located = await this.locate(asked);
    const migration = this.driver.drivingFor(located.vm.uuid) ?? (await this.store.openFor(located.vm.uuid));
    if (migration !== undefined) {
      await this.assertLockspaces(migration, definition);
      const staged = this.driver.stage(migration, definition);
      if (staged) {
        await staged;
        this.log.info({ migration, vm: located.vm.uuid }, `definition of ${located.vm.name} staged in migration ${migration}`);
        return { staged: true, migration };
      }
      // Settled meanwhile (its own staged definition applied first): this one applies directly,
      // where the VM is now. A record open but not driven here is refused by the agent (MIGRATING).
      await this.driver.running(migration)?.catch(() => undefined);
      located = await this.locate(asked);
    }
    return { applied: true, vm: await this.agents.define(located.host, located.vm.uuid, definition) };
  }

  /**
   * A staged definition is applied later, on the source or the destination: a lockspace either
   * host lacks is refused now (NO_LOCKSPACE), not found out at the end. Unnamed lockspaces are
   * each host's default; a host with no live record is not checked.
   */
  private async assertLockspaces(migration: string, definition: VmDefinition): Promise<void> {
    const named = [...new Set(definition.disks.flatMap((d) => (d.lockspace === undefined ? [] : [d.lockspace])))];
    if (named.length === 0) return;
    const [{ record }, hosts] = await Promise.all([this.get(migration), this.view.hosts()]);
    for (const host of [record.source, record.destination]) {
      const known = hosts.find((h) => h.host === host)?.lockspaces;
      const missing = known && named.find((l) => !known.includes(l));
      if (missing !== undefined) throw new BatonError('NO_LOCKSPACE', `host ${host}, where the definition may be applied, has no lockspace "${missing}"`, { details: { lockspace: missing, host, known } });
    }
  }

  /** The VMs every live host's agent runs (a host that does not answer is left out). */
  async vms(): Promise<HostedVm[]> {
    const hosts = (await this.view.hosts()).filter((h) => h.ttlLeftSeconds >= 0);
    const lists = await Promise.all(hosts.map((h) => this.agents.command(h.host, 'vm.list', {}).then((r) => r.vms, () => [])));
    return lists.flat();
  }

  /**
   * Start a VM on a host: its agent creates it paused, takes its leases, then runs it (a process
   * to spawn: the send's deadline, not a step's). A uuid that names a VM on another host is
   * refused: two copies of one VM would both run, and every later command naming it would find it
   * on several hosts. On the same host the agent's start answers with the VM it has.
   */
  async startVm(host: string, spec: VmSpecInput): Promise<HostedVm> {
    const elsewhere = (await this.vms()).find((v) => v.uuid === canonicalUuid(spec.uuid) && v.host !== host);
    if (elsewhere !== undefined) {
      throw new BatonError('ALREADY_REGISTERED', `VM ${spec.uuid} is on ${elsewhere.host} already (${elsewhere.state}); start it there or migrate it`, {
        details: { vm: spec.uuid, host: elsewhere.host, state: elsewhere.state },
      });
    }
    return this.agents.command(host, 'vm.start', spec, 'send');
  }

  /** Destroy a VM wherever it runs (refused with MIGRATING while it migrates). */
  async destroyVm(vm: string): Promise<DestroyedVm> {
    const found = (await this.vms()).filter((v) => v.uuid === canonicalUuid(vm) || v.name === vm);
    if (found.length === 0) throw new BatonError('VM_NOT_FOUND', `no host runs a VM ${vm}`, { details: { vm } });
    if (new Set(found.map((v) => v.uuid)).size > 1) throw new BatonError('INVALID_REQUEST', `"${vm}" names several VMs; give its uuid`, { details: { vms: found.map((v) => v.uuid) } });
    // A copy that runs (or holds locks) is the VM; an incoming copy elsewhere is the migration's to clean up.
    const target = found.find((v) => v.state === 'running' || v.locks.length > 0) ?? found[0]!;
    const result = await this.agents.command(target.host, 'vm.destroy', { uuid: target.uuid }, 'step');
    return { ...result, host: target.host };
  }

  /** The record once closed, if this replica drives it; else undefined. */
  async settled(id: string): Promise<MigrationRecord | undefined> {
    return (await this.driver.running(id)?.catch(() => undefined))?.record;
  }

  /** A record as etcd has it, or (no revision) as the history kept it once it left etcd. */
  async get(id: string): Promise<FoundMigration> {
    const stored = await this.store.get(id);
    if (stored) return stored;
    const kept = await this.history.find(id);
    if (kept) return { record: kept };
    throw new BatonError('MIGRATION_NOT_FOUND', `no migration ${id}`, { details: { migration: id } });
  }

  /** Every version of a record from `stored` on, until it is settled or `signal` aborts. */
  async follow(stored: FoundMigration, signal: AbortSignal, onRecord: (record: MigrationRecord) => void): Promise<void> {
    onRecord(stored.record);
    // Only settled records leave etcd for the history.
    if (isSettled(stored.record) || stored.revision === undefined) return;
    const done = Promise.withResolvers<void>();
    const watch = await this.conn.watch(this.conn.keys.migration(stored.record.id), { fromRevision: String(BigInt(stored.revision) + 1n) }, {
      put: (kv) => {
        const { record } = storedMigration(kv);
        onRecord(record);
        if (isSettled(record)) done.resolve();
      },
    });
    const abort = (): void => done.resolve();
    signal.addEventListener('abort', abort, { once: true });
    try {
      await done.promise;
    } finally {
      signal.removeEventListener('abort', abort);
      await watch.cancel();
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stop.abort(new BatonError('SHUTTING_DOWN', `coordinator ${this.id} is stopping`));
      await this.campaigning;
      await this.bus.close();
      this.conn.close();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function uniqueVm(asked: string, leases: ClusterLease[]): MigrationRecord['vm'] {
  const owners = new Map(leases.map((l) => [l.owner.uuid, l.owner.name]));
  if (owners.size === 0) throw new BatonError('VM_NOT_FOUND', `no VM ${asked} holds a lease in this cluster`, { details: { vm: asked } });
  if (owners.size > 1) throw new BatonError('INVALID_REQUEST', `"${asked}" names ${owners.size} VMs; give its uuid`, { details: { vms: [...owners.keys()] } });
  const [uuid, name] = [...owners][0]!;
  return { uuid, name };
}
