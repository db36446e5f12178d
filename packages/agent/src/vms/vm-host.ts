import { isDeepStrictEqual } from 'node:util';
import {
  asBatonError,
  BatonError,
  compareByStart,
  parseOrRefuse,
  VM_COMMANDS,
  AGENT_STEP_VERBS,
  type AgentStepVerb,
  type Grant,
  type HostedVm,
  type IdempotencyKey,
  type LeaseLoss,
  type MigrationPhase,
  type MigrationRecord,
  type MigrationStepParams,
  type ResourceRef,
  type Token,
  type VmCommandResult,
  type VmDefinition,
  type VmDisk,
  type VmInfo,
  type VmSpec,
} from '@baton/core';
import { assertCurrentIn, Handoff, leaseLost, MigrationStore, type HostSession } from '@baton/etcd';
import type { Bus } from '@baton/bus';
import type { ClusterLocks } from '../cluster/cluster-locks.js';
import type { ClusterMember } from '../cluster/cluster-member.js';
import type { HypervisorDriver } from '../hypervisor/driver.js';
import type { LockManager } from '../locks/lock-manager.js';
import type { Logger } from '../logger.js';
import type { OwnerRecord, OwnerRegistry } from '../owners/owner-registry.js';
import type { PolicyFile } from '../state/policy-file.js';
import { KeyedSerial } from './keyed-serial.js';

export interface VmHostOptions {
  host: string;
  driver: HypervisorDriver;
  bus: Bus;
  member: ClusterMember;
  cluster: ClusterLocks;
  locks: LockManager;
  registry: OwnerRegistry;
  /** Where a definition's policy is kept for a restart after a crash. */
  policies: PolicyFile;
  log: Logger;
}

/** A VM this agent process prepared as a migration's destination: the copy it created, and when. */
interface Arrival {
  migration: string;
  session: HostSession;
  vm: VmInfo;
}

/** The phases of a migration whose destination's copy will never run: the VM stays, or goes back, on its source. */
const ARRIVAL_ABANDONED: readonly MigrationPhase[] = ['unmarking', 'discarding', 'returning', 'restoring', 'aborted'];

/** Which end of a migration carries out each agent step. */
const STEP_ROLE: Record<AgentStepVerb, 'source' | 'destination'> = {
  prepare: 'destination',
  perform: 'source',
  resume: 'destination',
  confirm: 'source',
  discard: 'destination',
  restore: 'source',
};

/**
 * The VMs this host's hypervisor driver runs, and this host's side of their migrations, served
 * over NATS. A running VM is a pid-bound owner whose leases and local locks the agent holds as
 * for any other owner; the agent-side rules of the handoff are those of core's steps.ts:
 *
 * - every migration command is refused (STALE_TOKEN) when the migration's record in etcd has moved
 *   past the command's token, before anything else, but a resume the arrival vouches for (its
 *   record can only have moved on through this agent's own answer);
 * - perform lets go of the source's local locks only once the state was sent (S4);
 * - resume and restore run the VM only where this host holds every lease, with the lease's token,
 *   after taking the local locks (S3, S5): etcd says so, or (resume) this agent's own memory of
 *   the arrival proves it (see `vouched`); a destination that refuses to run its copy destroys it
 *   before answering;
 * - confirm and discard never destroy a running copy.
 *
 * Commands for one VM are handled one at a time; each is idempotent by its effect.
 */
export class VmHost implements AsyncDisposable {
  private readonly serial = new KeyedSerial();
  /**
   * VMs this process prepared as a migration's destination, by uuid: the migration and the
   * session they arrived under. Consumed by the VM's next migration command, whatever it is.
   */
  private readonly arrivals = new Map<string, Arrival>();
  private readonly store: MigrationStore;
  private readonly renewer: NodeJS.Timeout;
  private renewing = false;
  private closed = false;

  /** Every subscription, taken or refused by NATS. */
  private readonly subscribed: Promise<unknown>;

  private constructor(private readonly opts: VmHostOptions) {
    this.store = new MigrationStore(opts.member.conn);
    const { bus, host } = opts;
    const serving = [
      bus.serve(bus.subjects.agent(host, 'vm.start'), (p) => this.start(parseOrRefuse(VM_COMMANDS['vm.start'].params, p, 'vm.start'))),
      bus.serve(bus.subjects.agent(host, 'vm.list'), () => this.list()),
      bus.serve(bus.subjects.agent(host, 'vm.destroy'), (p) => this.destroy(parseOrRefuse(VM_COMMANDS['vm.destroy'].params, p, 'vm.destroy').uuid)),
      bus.serve(bus.subjects.agent(host, 'vm.define'), (p) => {
        const { uuid, definition } = parseOrRefuse(VM_COMMANDS['vm.define'].params, p, 'vm.define');
        return this.define(uuid, definition);
      }),
    ];
    for (const verb of AGENT_STEP_VERBS) {
      // Any refused resume may be followed by a give-back (a refusal is final for the coordinator),
      // even one refused before it names its VM: from then on no arrival is vouched for.
      const refused = verb === 'resume' ? () => this.arrivals.clear() : undefined;
      serving.push(bus.serve(bus.subjects.agent(host, `migration.${verb}`), (p) => this.step(verb, parseOrRefuse(VM_COMMANDS.migration.params, p, 'migration')), refused));
    }
    this.subscribed = Promise.all(serving);
    // A running VM writes only until the host's session deadline; each keepalive moves it on.
    this.renewer = setInterval(() => this.renewInBackground(), opts.member.timing.keepaliveMs);
  }

  /**
   * Serve this host's commands once NATS has taken every subscription. One it refuses (the host
   * runs under another host's NATS user, or permissions that leave out a verb) is DENIED: an agent
   * that would answer none of the coordinator's commands, or only some, must not start as if it
   * served them.
   */
  static async start(opts: VmHostOptions): Promise<VmHost> {
    const host = new VmHost(opts);
    try {
      await host.subscribed;
    } catch (err) {
      await host.close();
      throw err;
    }
    await host.removeLeftovers();
    return host;
  }

  /**
   * Whether this host's copy of a migration's VM can never run: the migration went back, or it
   * waits for a resume this host would refuse (its leases left with a session that ended; this
   * process has no arrival to vouch for, so it would read etcd and find them gone).
   */
  private async abandoned(record: MigrationRecord): Promise<boolean> {
    if (ARRIVAL_ABANDONED.includes(record.phase)) return true;
    if (record.phase !== 'committed') return false;
    return leaseLost((await Handoff.of(this.opts.member.conn, record).holders()).holders, record, this.opts.host) !== undefined;
  }

  /**
   * Copies an aborted migration left on this host, which can never run: the VM's latest migration
   * came here and was abandoned (`abandoned`), so the VM runs, or will, on its source, and this
   * copy, paused or still incoming, holds no lease. An agent that refuses a resume destroys
   * its copy itself; when it was down past its TTL, the coordinator answered its resume, prepare
   * or discard for it (EtcdSteps.unanswered), and the copy stayed. Only copies that never ran and
   * are no owner's are looked at, and the records are read only if there are any. Run when the
   * agent starts and when it has a new session after losing one (it was cut off, or stopped, past
   * its TTL); a failure is logged, and the copies stay until the next time.
   */
  async removeLeftovers(): Promise<void> {
    await this.removeLeftoversOnce().catch((err: unknown) => this.opts.log.warn({ err: (err as Error).message }, 'could not look for copies left by aborted migrations; they stay'));
  }

  private async removeLeftoversOnce(): Promise<void> {
    const { driver, registry, host, log } = this.opts;
    // Never run (the hypervisor says so: a driver that cannot tell removes nothing), and no owner's.
    const idle = (copies: VmInfo[]) => copies.filter((vm) => vm.ran === false && registry.get(vm.uuid) === undefined);
    const candidates = idle(await driver.list());
    if (candidates.length === 0) return;
    const records = (await this.store.list()).map((s) => s.record);
    for (const vm of candidates) {
      const latest = records.filter((r) => r.vm.uuid === vm.uuid).sort(compareByStart).at(-1);
      if (latest?.destination !== host || !(await this.abandoned(latest))) continue;
      await this.serial.run(vm.uuid, async () => {
        // A command may have come in since (the agent serves already): only a copy still idle goes.
        const now = await driver.find(vm.uuid);
        if (now === undefined || idle([now]).length === 0) return;
        await driver.destroy(vm.uuid);
        log.info({ vm: vm.uuid, migration: latest.id, phase: latest.phase }, `destroyed the copy of VM ${vm.name} that migration ${latest.id} (${latest.phase}) left here: it never ran here and holds no lease; the VM runs on ${latest.source}`);
      });
    }
  }

  private hosted(vm: VmInfo): HostedVm {
    return { ...vm, host: this.opts.host, locks: this.opts.locks.grantsOf(vm.uuid) };
  }

  /**
   * The VM's owner record, if it has one. A VM's record is pid-bound (to the VM's process); a
   * record of another kind under its uuid is a client of the agent's socket: not the VM's, and
   * refused, since the VM would share it and lose its locks when that client goes.
   */
  private vmOwner(uuid: string): OwnerRecord | undefined {
    const known = this.opts.registry.get(uuid);
    if (known === undefined || known.liveness === 'pid') return known;
    throw new BatonError('ALREADY_REGISTERED', `uuid ${uuid} is an owner of this agent's already (${known.owner.name}, ${known.liveness}-bound); a VM needs a uuid of its own`, {
      details: { vm: uuid, owner: known.owner, liveness: known.liveness },
    });
  }

  private register(vm: VmInfo, onLeaseLoss: LeaseLoss): OwnerRecord {
    return this.vmOwner(vm.uuid) ?? this.opts.registry.register({ uuid: vm.uuid, name: vm.name, pid: vm.pid }, 'pid', 0, onLeaseLoss);
  }

  /**
   * Drop the VM's local locks and its owner record (its leases are not touched), and the policy a
   * definition gave it unless the VM may still run here (sent, but not yet confirmed gone). A
   * client's record under the same uuid is not the VM's: left alone, with its locks.
   */
  private forget(uuid: string, { keepPolicy = false } = {}): Grant[] {
    if (this.opts.registry.get(uuid)?.liveness === 'connection') return [];
    this.opts.registry.remove(uuid);
    this.arrivals.delete(uuid);
    if (!keepPolicy) this.opts.policies.delete(uuid);
    return this.opts.locks.release(uuid);
  }

  /** Create the VM paused, take its leases and local locks, then run it. */
  start(spec: VmSpec): Promise<HostedVm> {
    const { driver, member } = this.opts;
    return this.serial.run(spec.uuid, async () => {
      const existing = await driver.find(spec.uuid);
      if (existing?.state === 'running') {
        this.assertRunsAs(existing, spec);
        return this.hosted(existing);
      }
      if (existing?.state === 'incoming') throw new BatonError('MIGRATING', `VM ${spec.name} is arriving here in a migration`, { details: { vm: spec.uuid } });
      // Before a process is spawned: a uuid a client holds is refused without one to clean up.
      this.vmOwner(spec.uuid);
      const vm = existing ?? (await driver.create(spec));
      try {
        const grants = this.opts.locks.holdsAny(spec.uuid) ? this.opts.locks.grantsOf(spec.uuid) : await this.acquireDisks(this.register(vm, spec.onLeaseLoss), spec.disks);
        const running = await driver.resume(spec.uuid, grants, member.validUntil);
        this.opts.log.info({ vm: spec.uuid, name: spec.name, pid: running.pid, tokens: grants.map((g) => g.token) }, `VM ${spec.name} started`);
        return this.hosted(running);
      } catch (err) {
        await this.stopAndRelease(spec.uuid);
        throw err;
      }
    });
  }

  /**
   * A start of a VM that runs here already answers with it (a start sent again) only if it asks
   * for what runs: another name, disk set or lease-loss policy is refused, not silently dropped.
   * A change goes through `define`.
   */
  private assertRunsAs(vm: VmInfo, spec: VmSpec): void {
    const change = this.diskChange(spec.uuid, spec.disks);
    const differs = [
      ...(vm.name === spec.name ? [] : ['name']),
      ...(change.added.length + change.removed.length === 0 ? [] : ['disks']),
      ...(isDeepStrictEqual(this.opts.registry.get(spec.uuid)?.onLeaseLoss, spec.onLeaseLoss) ? [] : ['onLeaseLoss']),
    ];
    if (differs.length === 0) return;
    throw new BatonError('ALREADY_REGISTERED', `VM ${vm.name} runs on ${this.opts.host} already, with another ${differs.join(', ')}; change its definition instead (vm.define, PUT /v1/vms/:vm/definition)`, {
      details: { vm: spec.uuid, host: this.opts.host, differs },
    });
  }

  /** Cluster leases, then local locks, for a VM's disks: all of them or none. */
  private acquireDisks(owner: OwnerRecord, disks: readonly VmDisk[]): Promise<Grant[]> {
    return this.opts.cluster.acquire(
      owner,
      disks.map((d) => ({ name: d.path, mode: d.mode, ...(d.lockspace === undefined ? {} : { lockspace: d.lockspace }) })),
    );
  }

  /** Local locks, then leases, of some of a VM's disks (the VM no longer writes them). */
  private async releaseDisks(uuid: string, grants: readonly Grant[]): Promise<Grant[]> {
    const released = this.opts.locks.release(uuid, grants.map((g): ResourceRef => ({ name: g.resource, lockspace: g.lockspace, mode: g.mode })));
    await this.opts.cluster.release(uuid, released);
    return released;
  }

  /** The VM's process goes first, then its local locks, then its leases: nothing writes unprotected. */
  private async stopAndRelease(uuid: string): Promise<number> {
    const held = this.opts.locks.grantsOf(uuid).length;
    await this.opts.driver.destroy(uuid);
    // The liveness monitor watches the VM's pid and may have seen it exit first, released its
    // locks and started on its leases: whichever path released them, they are gone when this answers.
    const released = this.forget(uuid);
    await this.opts.cluster.release(uuid, released);
    await this.opts.cluster.drained(uuid);
    return held;
  }

  async list(): Promise<VmCommandResult<'vm.list'>> {
    return { vms: (await this.opts.driver.list()).map((vm) => this.hosted(vm)) };
  }

  /** `action` says what waits for the migration's end, in the refusal's message. */
  private async assertNotMigrating(uuid: string, action: string): Promise<void> {
    const migration = await this.store.openFor(uuid);
    if (migration !== undefined) throw new BatonError('MIGRATING', `VM ${uuid} is in migration ${migration}; ${action} once the migration has ended`, { details: { vm: uuid, migration } });
  }

  /**
   * `fn` in the VM's turn, unless the VM migrates: refused at once, not after the VM's queue (a
   * send in it may take a minute), and checked again in turn.
   */
  private async unlessMigrating<T>(uuid: string, action: string, fn: () => Promise<T>): Promise<T> {
    await this.assertNotMigrating(uuid, action);
    return this.serial.run(uuid, async () => {
      await this.assertNotMigrating(uuid, action);
      return fn();
    });
  }

  /** The VM as this host's hypervisor has it, or VM_NOT_FOUND. */
  private async found(uuid: string, name = uuid): Promise<VmInfo> {
    const vm = await this.opts.driver.find(uuid);
    if (!vm) throw this.notFound(uuid, name);
    return vm;
  }

  private notFound(uuid: string, name: string): BatonError {
    return new BatonError('VM_NOT_FOUND', `no VM ${name} on host ${this.opts.host}`, { details: { vm: uuid, host: this.opts.host } });
  }

  destroy(uuid: string): Promise<VmCommandResult<'vm.destroy'>> {
    return this.unlessMigrating(uuid, 'destroy it', async () => {
      await this.found(uuid);
      const released = await this.stopAndRelease(uuid);
      this.opts.log.info({ vm: uuid, released }, `VM ${uuid} destroyed`);
      return { uuid, released };
    });
  }

  /**
   * Replace a running VM's definition, in its turn after the VM's other commands (a start or a
   * destroy in progress ends first). Disks added are leased and locked first, as a start does, so
   * if that fails nothing has changed. Then the VM is given its new disk set, and only once it no
   * longer writes the removed disks are their locks and leases released. Refused while the VM
   * migrates: the coordinator stages the change in the migration's record instead.
   */
  define(uuid: string, definition: VmDefinition): Promise<HostedVm> {
    return this.unlessMigrating(uuid, 'redefine it (the coordinator stages the change in the migration meanwhile)', async () => {
      const { driver, log } = this.opts;
      const vm = await this.found(uuid);
      if (vm.state === 'incoming') throw new BatonError('MIGRATING', `VM ${vm.name} is arriving here in a migration`, { details: { vm: uuid } });
      const change = this.diskChange(uuid, definition.disks);
      const owner = this.register(vm, definition.onLeaseLoss);
      const added = change.added.length === 0 ? [] : await this.acquireDisks(owner, change.added);
      let changed: VmInfo;
      try {
        changed = await driver.regrant(uuid, [...change.kept, ...added]);
      } catch (err) {
        // No answer: the VM may write the added disks already, so they stay held; the same define
        // again finds them held and finishes the change.
        if (asBatonError(err).code !== 'UNAVAILABLE') await this.releaseDisks(uuid, added);
        throw err;
      }
      const released = await this.releaseDisks(uuid, change.removed);
      owner.onLeaseLoss = definition.onLeaseLoss;
      this.opts.policies.set(uuid, definition.onLeaseLoss);
      log.info({ vm: uuid, added: added.map((g) => [g.resource, g.token]), released: released.map((g) => g.resource), onLeaseLoss: definition.onLeaseLoss.policy }, `VM ${vm.name} redefined`);
      return this.hosted(changed);
    });
  }

  /**
   * What a new disk set changes for a VM: the grants it keeps, the disks to add, the grants to
   * drop. Every disk is resolved in its lockspace first (NO_LOCKSPACE, OUTSIDE_LOCKSPACE,
   * RESOURCE_NOT_FOUND); nothing is changed here.
   */
  private diskChange(uuid: string, disks: readonly VmDisk[]): { kept: Grant[]; added: VmDisk[]; removed: Grant[] } {
    const { locks } = this.opts;
    const held = locks.grantsOf(uuid);
    const heldByKey = new Map(held.map((g) => [locks.keyOf(g), g]));
    const kept: Grant[] = [];
    const added: VmDisk[] = [];
    const named = new Set<string>();
    for (const disk of disks) {
      const lockspace = locks.lockspace(disk.lockspace);
      const identity = lockspace.identify(disk.path);
      const key = locks.keyOf({ lockspace: lockspace.name, resource: identity });
      if (named.has(key)) throw new BatonError('INVALID_REQUEST', `"${disk.path}" is named twice in one definition`, { details: { resource: identity } });
      named.add(key);
      const grant = heldByKey.get(key);
      if (grant === undefined) added.push(disk);
      else if (grant.mode !== disk.mode) {
        throw new BatonError('INVALID_REQUEST', `"${disk.path}" is held ${grant.mode}; to change its mode, remove the disk, then add it again`, { details: { resource: identity, heldMode: grant.mode } });
      } else kept.push(grant);
    }
    return { kept, added, removed: held.filter((g) => !kept.includes(g)) };
  }

  private step(verb: AgentStepVerb, params: MigrationStepParams): Promise<VmCommandResult<'migration'>> {
    const { key, record } = params;
    const role = STEP_ROLE[verb];
    if (key.step !== verb || key.migration !== record.id) throw new BatonError('INVALID_REQUEST', `a ${verb} command carries the key of ${key.step} of ${key.migration}`);
    if (record[role] !== this.opts.host) throw new BatonError('INVALID_REQUEST', `${verb} is the ${role}'s step; this host is not the ${role} of migration ${record.id}`, { details: { migration: record.id, [role]: record[role] } });
    return this.serial.run(record.vm.uuid, async () => {
      this.opts.log.debug({ migration: record.id, step: verb, token: key.token }, `migration ${record.id}: ${verb}`);
      const arrival = this.arrivals.get(record.vm.uuid);
      this.arrivals.delete(record.vm.uuid);
      if (verb === 'resume' || verb === 'restore') {
        // On the handoff's critical path: no round trip at all when the arrival vouches for it.
        const vouched = verb === 'resume' ? this.vouched(record, key.token, arrival) : undefined;
        if (vouched) return this.run(record, role, vouched.tokens, vouched.vm);
        // Otherwise the VM's copy is asked for while the leases are checked.
        const copy = this.opts.driver.find(record.vm.uuid);
        copy.catch(() => undefined);
        const tokens = await this.leaseTokens(record, role, key, copy);
        return this.run(record, role, tokens, await copy);
      }
      await this.store.assertCurrent(key);
      switch (verb) {
        case 'prepare': {
          const prepared = await this.prepare(record);
          const session = this.opts.member.session;
          if (session.isValid) this.arrivals.set(record.vm.uuid, { migration: record.id, session, vm: prepared.vm });
          return prepared;
        }
        case 'perform':
          return this.perform(record);
        case 'confirm':
        case 'discard':
          return this.discard(record);
      }
    });
  }

  /**
   * The commit's tokens, known without asking etcd, and the copy, known without asking the
   * hypervisor, when this process prepared that copy for this migration under the session it
   * still holds, and no command for the VM came in between (a copy gone since fails its unpause).
   * The commit moved the leases onto that session (it compares the destination's session), and
   * while the session lives they leave it only by a give-back, which follows a refused resume: this
   * agent's own refusal, which consumes the arrival, or one refused before it named its VM, which
   * clears them all. The one etcd transaction inside the handoff's critical path is the commit.
   */
  private vouched(record: MigrationRecord, token: Token, arrival: Arrival | undefined): { tokens: Token[]; vm: VmInfo } | undefined {
    const { member } = this.opts;
    if (arrival === undefined || arrival.migration !== record.id || arrival.session !== member.session || member.state !== 'valid') return undefined;
    if (record.phase !== 'committed' || record.tokens.commit !== token) return undefined;
    return { tokens: record.resources.map(() => token), vm: arrival.vm };
  }

  /**
   * The tokens of the VM's leases as etcd has them now (the leases and the record in one read),
   * all of them this host's for this VM, or a refusal.
   */
  private async leaseTokens(record: MigrationRecord, role: 'source' | 'destination', key: IdempotencyKey, copy: Promise<VmInfo | undefined>): Promise<Token[]> {
    const { holders, record: stored } = await Handoff.of(this.opts.member.conn, record).holders();
    assertCurrentIn(stored, key);
    const lost = leaseLost(holders, record, this.opts.host);
    if (lost) {
      // The destination's session was lost after commit: this copy must never run.
      await this.dropCopy(role, await copy);
      throw lost;
    }
    return holders.map((h) => h.token!);
  }

  /** Destination: the VM created paused, waiting for its state, with the definition in force. */
  private async prepare(record: MigrationRecord): Promise<{ vm: VmInfo; incoming: string }> {
    const { driver, locks } = this.opts;
    const existing = await driver.find(record.vm.uuid);
    if (existing?.state === 'running') throw new BatonError('RESOURCE_BUSY', `VM ${record.vm.name} already runs on ${this.opts.host}`, { details: { vm: record.vm.uuid } });
    // Every disk must resolve in a lockspace of this host, or the destination could never lock it.
    locks.plan(record.vm.uuid, record.resources);
    const { vm, incoming } = await driver.createIncoming({
      uuid: record.vm.uuid,
      name: record.vm.name,
      disks: record.resources.map((r) => ({ path: r.name, mode: r.mode, lockspace: r.lockspace })),
      onLeaseLoss: record.onLeaseLoss ?? { policy: 'kill' },
    });
    return { vm, incoming };
  }

  /** Source: send the state; only once it arrived, let go of the local locks (S4). */
  private async perform(record: MigrationRecord): Promise<VmCommandResult<'migration'>> {
    const { driver, log } = this.opts;
    if (record.incoming === null) throw new BatonError('INVALID_REQUEST', `migration ${record.id} has no incoming address`);
    await this.found(record.vm.uuid, record.vm.name);
    const vm = await driver.send(record.vm.uuid, record.incoming);
    // The policy it ran under goes with it (a definition may have changed it since its leases were
    // granted). Kept here until the copy is confirmed gone: a repeated perform reports it again,
    // and a restore after an abort runs under it.
    const onLeaseLoss = this.opts.registry.get(record.vm.uuid)?.onLeaseLoss ?? this.opts.policies.get(record.vm.uuid);
    const released = this.forget(record.vm.uuid, { keepPolicy: true });
    log.info({ migration: record.id, vm: record.vm.uuid, seq: vm.seq, released: released.length }, `VM ${record.vm.name} sent to ${record.destination}; local locks dropped`);
    return onLeaseLoss === undefined ? { vm } : { vm, onLeaseLoss };
  }

  /**
   * A destination's resume refused for good is followed by a give-back: its copy, unless it runs
   * already, goes, so nothing is left paused here and no late resume can unpause it.
   */
  private async dropCopy(role: 'source' | 'destination', vm: VmInfo | undefined): Promise<void> {
    if (role === 'destination' && vm !== undefined && vm.state !== 'running') await this.opts.driver.destroy(vm.uuid);
  }

  /** A copy that will not run here: its locks and record go, and on the destination the copy itself. */
  private async abandon(uuid: string, role: 'source' | 'destination'): Promise<void> {
    this.forget(uuid);
    if (role === 'destination') await this.opts.driver.destroy(uuid);
  }

  /**
   * Run the VM here (resume on the destination, restore on the source) under its leases' `tokens`
   * (the caller established this host holds them): local locks under those tokens first, then
   * unpause.
   */
  private async run(record: MigrationRecord, role: 'source' | 'destination', tokens: Token[], vm: VmInfo | undefined): Promise<VmCommandResult<'migration'>> {
    const { driver, locks, member } = this.opts;
    const uuid = record.vm.uuid;
    if (!vm) throw this.notFound(uuid, record.vm.name);
    if (member.state !== 'valid') {
      await this.dropCopy(role, vm);
      throw new BatonError('LEASE_LOST', `this host's session is ${member.state}`);
    }
    // The destination runs the VM under the policy the source ran it under; a source that still
    // knows the VM (the send failed) keeps its own, which is at least as new.
    const owner = this.register(vm, record.onLeaseLoss ?? { policy: 'kill' });
    if (role === 'destination' && record.onLeaseLoss !== null) owner.onLeaseLoss = record.onLeaseLoss;
    try {
      if (locks.holdsAny(uuid)) {
        // Held already (a restore before the send, or a repeated command): the leases' tokens now.
        locks.retoken(uuid, new Map(locks.grantsOf(uuid).map((g) => [locks.keyOf(g), tokens[record.resources.findIndex((r) => r.name === g.resource && r.lockspace === g.lockspace)]!])));
      } else {
        locks.commit(uuid, locks.plan(uuid, record.resources), tokens);
      }
    } catch (err) {
      // S5: a destination that cannot lock never runs; its copy goes, so no late resume can unpause it.
      await this.abandon(uuid, role);
      throw err;
    }
    let running: VmInfo;
    try {
      running = await driver.resume(uuid, locks.grantsOf(uuid), member.validUntil);
    } catch (err) {
      // No answer: the copy may be running; only the same command again can tell (it is retried).
      if (asBatonError(err).code === 'UNAVAILABLE') throw err;
      // Refused to run: it never ran, so it holds nothing, as if the locks had failed (S5).
      await this.abandon(uuid, role);
      throw err;
    }
    if (role === 'destination') {
      // It runs here: the commit's markers go, so the handoff is over in etcd (after the unpause,
      // outside the critical path). Not done: the answer is UNAVAILABLE and the resume comes
      // again, which finds the VM running and settles again.
      await Handoff.of(member.conn, record)
        .settle(tokens[0]!)
        .catch((err: unknown) => {
          throw new BatonError('UNAVAILABLE', `VM ${record.vm.name} runs on ${this.opts.host}, but its handoff could not be settled in etcd: ${(err as Error).message}`, { details: { migration: record.id }, cause: err });
        });
    }
    this.opts.log.info({ migration: record.id, vm: uuid, pid: running.pid, owner: owner.owner.uuid, tokens }, `VM ${record.vm.name} runs on ${this.opts.host} (${role === 'destination' ? 'migrated in' : 'restored'})`);
    return { vm: running };
  }

  /** confirm (source) and discard (destination): the copy that does not run goes. */
  private async discard(record: MigrationRecord): Promise<VmCommandResult<'migration'>> {
    const vm = await this.opts.driver.find(record.vm.uuid);
    if (!vm) return { vm: null };
    if (vm.state === 'running') throw new BatonError('RESOURCE_BUSY', `VM ${record.vm.name} runs on ${this.opts.host}; a running copy is never destroyed`, { details: { vm: record.vm.uuid } });
    await this.opts.driver.destroy(record.vm.uuid);
    this.forget(record.vm.uuid);
    return { vm: null };
  }

  private renewInBackground(): void {
    if (this.renewing || this.closed) return;
    this.renewing = true;
    const { driver, locks, member, log } = this.opts;
    driver
      .list()
      .then((vms) => Promise.all(vms.filter((vm) => vm.state === 'running' && locks.holdsAny(vm.uuid)).map((vm) => driver.renew(vm.uuid, member.validUntil))))
      .catch((err: unknown) => log.warn({ err: (err as Error).message }, 'could not extend the write deadline of every VM'))
      .finally(() => (this.renewing = false));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.renewer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

