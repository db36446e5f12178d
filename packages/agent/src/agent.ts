import {
  asBatonError,
  BatonError,
  PROTOCOL_VERSION,
  systemClock,
  wallTimeIso,
  type AgentParsedParams,
  type AgentResult,
  type MonotonicClock,
} from '@baton/core';
import type { ClientConnection } from './api/connection.js';
import type { ConnectionContext, Handlers } from './api/dispatch.js';
import { SocketServer } from './api/socket-server.js';
import type { AgentConfig } from './config.js';
import { HttpServer } from './http/http-server.js';
import { AgentMetrics } from './http/metrics.js';
import { LockManager } from './locks/lock-manager.js';
import { Lockspace } from './locks/lockspace.js';
import { TokenSource } from './locks/token-source.js';
import type { Logger } from './logger.js';
import { probeOfdLocks } from './locks/ofd-probe.js';
import { LivenessMonitor } from './owners/liveness-monitor.js';
import { OwnerRegistry, type OwnerRecord } from './owners/owner-registry.js';
import { makeConfiguredDir } from './state/dirs.js';
import { reexecImage } from './state/reexec.js';
import { ClusterLocks } from './cluster/cluster-locks.js';
import { ClusterMember } from './cluster/cluster-member.js';
import { driverPauses, Fencer } from './cluster/fencer.js';
import { carriedInput, REEXEC_ENV, takeInheritedState, type AgentState } from './state/state-file.js';
import { resolveGroup } from './sys/groups.js';
import type { PeerCred } from './sys/index.js';
import { VERSION } from './version.js';
import { Bus } from '@baton/bus';
import type { HypervisorDriver } from './hypervisor/driver.js';
import { PolicyFile } from './state/policy-file.js';
import { SimDriver } from './hypervisor/sim/sim-driver.js';
import { VmHost } from './vms/vm-host.js';

export interface AgentOptions {
  config: AgentConfig;
  logger: Logger;
  clock?: MonotonicClock;
}

type AgentLifecycle = 'serving' | 'degraded' | 're-executing' | 'stopping' | 'closed';

/**
 * One host's lock daemon (virtlockd's role): holds fcntl locks for the VMs on this host, serves
 * them over a UNIX socket, releases what dead owners held, and re-executes itself without ever
 * letting go of a lock.
 */
export class Agent implements AsyncDisposable {
  private state: AgentLifecycle = 'serving';
  private degradedBy: BatonError | undefined;
  private generation = 0;
  private httpServer: HttpServer | undefined;
  private member: ClusterMember | undefined;
  private cluster: ClusterLocks | undefined;
  private fencer: Fencer | undefined;
  private driver: HypervisorDriver | undefined;
  /** The policies definitions gave the driver's VMs (with a driver only). */
  private policies: PolicyFile | undefined;
  private bus: Bus | undefined;
  private vms: VmHost | undefined;
  private monitor!: LivenessMonitor;
  private server!: SocketServer;
  private closing: Promise<void> | undefined;
  private readonly registry = new OwnerRegistry();
  private readonly metrics = new AgentMetrics({
    locksHeld: () => this.locks.size,
    owners: () => this.registry.size,
    connections: () => this.server?.connections().length ?? 0,
    generation: () => this.generation,
    degraded: () => this.state === 'degraded',
    sessionLeftMs: () => this.member && Math.max(0, this.member.validUntil - this.clock.now()),
  });
  private readonly locks: LockManager;
  private readonly tokens: TokenSource;
  private readonly clock: MonotonicClock;
  private readonly log: Logger;
  private readonly ofd: boolean;
  private readonly stopped = Promise.withResolvers<void>();
  /** Resolves when the agent has stopped serving, for whatever reason. */
  readonly closed: Promise<void> = this.stopped.promise;

  private constructor(
    readonly config: AgentConfig,
    logger: Logger,
    clock: MonotonicClock,
  ) {
    this.log = logger;
    this.clock = clock;
    makeConfiguredDir('stateDir', config.stateDir, 0o700);
    for (const [i, ls] of config.lockspaces.entries()) if (ls.dir !== undefined) makeConfiguredDir(`lockspaces[${i}].dir`, ls.dir, 0o755);
    this.ofd = config.ofdLocks && probeOfdLocks(config.stateDir);
    this.locks = new LockManager({
      lockspaces: config.lockspaces.map((c) => new Lockspace(c)),
      defaultLockspace: config.defaultLockspace ?? config.lockspaces[0]!.name,
      tokens: (this.tokens = new TokenSource(config.stateDir, config.tokenBlock)),
      ofd: this.ofd,
      onRemoveFailed: (lockPath, err) => this.log.warn({ lockPath, err: (err as Error).message }, `could not remove the unused lock file ${lockPath}; it stays`),
    });
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const agent = new Agent(opts.config, opts.logger, opts.clock ?? systemClock);
    await agent.boot();
    return agent;
  }

  private async boot(): Promise<void> {
    const fromPid = process.env[REEXEC_ENV];
    // Children (sim VMs, killpaths) must not believe they were re-executed.
    delete process.env[REEXEC_ENV];
    const inherited = takeInheritedState(this.config.stateDir, fromPid === String(process.pid));
    // The socket and the connections are adopted whenever the file is ours, even if its locks
    // cannot be: clients keep their connections and learn why nothing is granted.
    let adopted: AgentState | undefined;
    let replaceSocket = false;
    if (inherited.kind === 'adopt') {
      adopted = inherited.state;
      this.generation = adopted.generation + 1;
      try {
        this.locks.adopt(adopted.locks);
        this.registry.restore(adopted.owners);
        this.tokens.resumeAt(adopted.nextToken);
      } catch (err) {
        this.degrade(asBatonError(err, 'STATE_INVALID'));
      }
    } else if (inherited.kind === 'refused') {
      if (inherited.reexec) {
        // Unreadable after our own exec: the inherited listener still holds the path, unknown to us.
        replaceSocket = true;
        this.degrade(inherited.error);
      } else {
        // A leftover from another process: nothing of it is held by us, so start clean.
        this.log.error({ code: inherited.error.code, details: inherited.error.details }, `refused a stale state file: ${inherited.error.message}`);
      }
    }

    if (this.config.http.enabled) {
      this.httpServer = await HttpServer.start({ host: this.config.http.host, port: this.config.http.port, registry: this.metrics.registry, health: this });
    }
    // Before the socket serves anything: a request answered without the cluster would be granted
    // on local locks alone, and a VM reconnecting after a crash would find itself unknown.
    const hv = this.config.hypervisor;
    if (hv) this.driver = new SimDriver(this.config.stateDir, this.config.hostId, hv.writeIntervalMs);
    if (this.config.etcd) await this.joinCluster(adopted);
    if (this.config.nats) await this.serveVms(this.config.nats);
    this.server = await SocketServer.listen({
      path: this.config.socket.path,
      mode: this.config.socket.mode,
      gid: this.config.socket.group === undefined ? undefined : resolveGroup(this.config.socket.group),
      handlers: this.handlers(),
      allowPeer: (peer) => this.allowPeer(peer),
      onConnectionClosed: (conn) => this.connectionClosed(conn),
      inheritedFd: adopted?.listenFd,
      replaceExisting: replaceSocket,
      firstConnectionId: adopted?.nextConnectionId ?? 1,
    });
    this.monitor = new LivenessMonitor(this.registry, {
      pollMs: this.config.owners.pidPollMs,
      termGraceMs: this.config.owners.termGraceMs,
      clock: this.clock,
      onGone: (record, why) => this.ownerGone(record, why),
      onSignal: (record, signal) => {
        this.metrics.ownerSignals.inc({ signal });
        this.log.warn({ owner: record.owner, signal }, `sent ${signal} to owner ${record.owner.name}: its connection closed while it held locks`);
      },
    });
    if (adopted) {
      this.server.adopt(adopted.connections.map(({ queued, pending, discarding, ...c }) => ({ ...c, carried: carriedInput({ queued, pending, discarding }) })));
      // Termination in progress when the old image exec'd restarts its grace period here.
      for (const r of this.registry.all()) if (r.state === 'terminating') this.monitor.terminate(r, 'connection closed (before re-exec)');
    }

    this.log.info(
      {
        socket: this.config.socket.path,
        httpPort: this.httpServer?.port ?? null,
        generation: this.generation,
        ofdLocks: this.ofd,
        adoptedLocks: this.locks.size,
        adoptedConnections: adopted?.connections.length ?? 0,
        lockspaces: this.config.lockspaces,
      },
      adopted ? `agent re-executed (generation ${this.generation}), ${this.locks.size} locks adopted` : 'agent started',
    );
  }

  /**
   * Join the cluster before taking any request: adopt the session of the previous image (re-exec),
   * or the one a crashed process left (restart), re-taking its running owners' local locks.
   */
  private async joinCluster(adopted: AgentState | undefined): Promise<void> {
    const etcd = this.config.etcd!;
    const member = await ClusterMember.join({
      config: etcd,
      stateDir: this.config.stateDir,
      clock: this.clock,
      log: this.log,
      record: {
        host: this.config.hostId,
        address: this.httpServer ? `${this.config.http.host}:${this.httpServer.port}` : '',
        version: VERSION,
        pid: process.pid,
        lockspaces: this.config.lockspaces.map((l) => l.name),
        startedAt: wallTimeIso(),
      },
      resume: adopted?.cluster,
      onExpired: () => {
        this.metrics.fences.inc();
        this.cluster!.fenceAll();
      },
      onRecovered: async (session) => {
        await this.cluster!.recover(session);
        // A migration may have been answered for this host while it was away (EtcdSteps.unanswered).
        await this.vms?.removeLeftovers();
      },
      heldKeys: () => this.cluster?.heldKeys() ?? new Set(),
    });
    this.member = member;
    const driver = this.driver;
    this.fencer = new Fencer({
      log: this.log,
      killGraceMs: member.timing.fenceKillGraceMs,
      ...(driver ? { vms: driverPauses(driver, (uuid) => this.locks.grantsOf(uuid), () => member.validUntil) } : {}),
    });
    const policies = driver && new PolicyFile(this.config.stateDir, this.config.hostId, (problem) => this.log.warn({ problem }, 'the policy file is ignored'));
    this.policies = policies;
    this.cluster = new ClusterLocks({
      member,
      locks: this.locks,
      registry: this.registry,
      fencer: this.fencer,
      log: this.log,
      host: this.config.hostId,
      ...(driver && policies ? { vms: { driver, policies } } : {}),
    });
    // A session taken over across the re-exec expires here if the exec outlasted its deadline:
    // the owners it leaves running are fenced and a new session is sought, as after any loss.
    member.start();
    if (!adopted && member.session.adopted) await this.cluster.adopt(member.session);
  }

  /** The coordinator's commands: this host's VMs and its steps of their migrations (needs etcd and a driver: the config says so). */
  private async serveVms(config: NonNullable<AgentConfig['nats']>): Promise<void> {
    // What NATS refuses after the connect (a publish, a subscription, the credentials on a
    // reconnect) goes to the agent's log with its code, where its other failures are.
    this.bus = await Bus.connect(config, `baton-agent ${this.config.hostId}`, { onError: (err) => this.log.error({ code: err.code, details: err.details }, err.message) });
    this.vms = await VmHost.start({ host: this.config.hostId, driver: this.driver!, bus: this.bus, member: this.member!, cluster: this.cluster!, locks: this.locks, registry: this.registry, policies: this.policies!, log: this.log });
  }

  private degrade(err: BatonError): void {
    this.state = 'degraded';
    this.degradedBy = err;
    this.log.fatal(
      { code: err.code, details: err.details },
      `inherited state refused: ${err.message}. Every inherited descriptor stays open (no lock is dropped); no new lock is granted until an operator restarts the agent with the VMs stopped`,
    );
  }

  notReadyReason(): string | undefined {
    if (this.state === 'serving') {
      const cluster = this.member?.state;
      return cluster === 'fenced' || cluster === 'recovering' ? `cluster session ${cluster}: granting nothing` : undefined;
    }
    return this.state === 'degraded' ? `degraded: ${this.degradedBy?.message}` : this.state;
  }

  private allowPeer(peer: PeerCred | undefined): boolean {
    if (peer === undefined) return false;
    // The socket's mode already gates who can connect; a configured group widens it on purpose.
    return peer.uid === 0 || peer.uid === process.geteuid?.() || this.config.socket.group !== undefined;
  }

  private handlers(): Handlers {
    return {
      hello: () => this.hello(),
      register: (ctx, p) => this.register(ctx, p),
      acquire: (ctx, p) => this.acquire(ctx, p),
      release: (ctx, p) => this.release(ctx, p),
      inquire: (ctx, p) => this.inquire(ctx, p),
      locks: (ctx) => this.listLocks(ctx),
      watchdog: (ctx) => this.watchdog(ctx),
      clusterLocks: async (ctx) => ({ leases: await this.clusterMember(ctx).view.leases() }),
      hosts: async (ctx) => ({ hosts: await this.clusterMember(ctx).view.hosts() }),
      fenceHost: (ctx, p) => this.fenceHost(ctx, p),
      shutdown: (ctx, p) => this.shutdown(ctx, p),
    };
  }

  private hello(): AgentResult<'hello'> {
    return {
      protocol: PROTOCOL_VERSION,
      host: this.config.hostId,
      pid: process.pid,
      version: VERSION,
      generation: this.generation,
      httpPort: this.httpServer?.port ?? null,
      ofdLocks: this.ofd,
    };
  }

  private register(ctx: ConnectionContext, p: AgentParsedParams<'register'>): AgentResult<'register'> {
    if (ctx.restricted) throw new BatonError('DENIED', 'this connection is restricted to its owner');
    if (ctx.ownerUuid !== undefined) throw new BatonError('ALREADY_REGISTERED', `this connection already registered owner ${ctx.ownerUuid}`, { details: { owner: ctx.ownerUuid } });
    const record = this.registry.register(p.owner, p.liveness, ctx.id, p.onLeaseLoss);
    ctx.ownerUuid = record.owner.uuid;
    ctx.restricted = p.restricted;
    this.log.info({ owner: record.owner, liveness: record.liveness, restricted: p.restricted, peer: ctx.peer }, `owner ${record.owner.name} registered`);
    return { owner: record.owner, liveness: record.liveness, restricted: p.restricted, onLeaseLoss: record.onLeaseLoss };
  }

  private ownerOf(ctx: ConnectionContext): OwnerRecord {
    const record = ctx.ownerUuid === undefined ? undefined : this.registry.get(ctx.ownerUuid);
    if (!record) throw new BatonError('NOT_REGISTERED', 'register an owner on this connection first');
    return record;
  }

  /** Lock changes need a table the agent can trust and an agent that is not going away. */
  private assertServing(): void {
    if (this.state === 'degraded') throw this.degradedBy!;
    if (this.state !== 'serving') throw new BatonError('SHUTTING_DOWN', `agent is ${this.state}`);
  }

  private acquire(ctx: ConnectionContext, p: AgentParsedParams<'acquire'>): AgentResult<'acquire'> | Promise<AgentResult<'acquire'>> {
    this.assertServing();
    const record = this.ownerOf(ctx);
    if (record.state !== 'live') throw new BatonError('DENIED', `owner ${record.owner.uuid} is ${record.state}`);
    const started = this.clock.now();
    const done = (grants: AgentResult<'acquire'>['grants']): AgentResult<'acquire'> => {
      this.metrics.grants.inc({ result: 'granted' });
      this.metrics.grantSeconds.observe((this.clock.now() - started) / 1000);
      this.log.debug({ owner: record.owner.uuid, grants }, `granted ${grants.length} lock(s) to ${record.owner.name}`);
      return { grants };
    };
    const failed = (err: unknown): never => {
      this.metrics.grants.inc({ result: err instanceof BatonError && err.code === 'RESOURCE_BUSY' ? 'busy' : 'error' });
      this.metrics.grantSeconds.observe((this.clock.now() - started) / 1000);
      throw err;
    };
    if (this.cluster) return this.cluster.acquire(record, p.resources).then(done, failed);
    try {
      return done(this.locks.acquire(record.owner.uuid, p.resources));
    } catch (err) {
      return failed(err);
    }
  }

  private release(ctx: ConnectionContext, p: AgentParsedParams<'release'>): AgentResult<'release'> | Promise<AgentResult<'release'>> {
    this.assertServing();
    const record = this.ownerOf(ctx);
    const released = this.locks.release(record.owner.uuid, p.resources);
    this.metrics.releases.inc({ reason: 'requested' }, released.length);
    this.log.debug({ owner: record.owner.uuid, released }, `released ${released.length} lock(s) of ${record.owner.name}`);
    // Answered at once without a cluster: a promise would hold the connection's next request back a turn.
    return this.cluster ? this.cluster.release(record.owner.uuid, released).then(() => ({ released })) : { released };
  }

  private watchdog(ctx: ConnectionContext): AgentResult<'watchdog'> {
    const record = this.ownerOf(ctx);
    const locks = this.locks.grantsOf(record.owner.uuid);
    if (!this.member) return { state: 'local', validUntil: null, locks };
    // A fenced owner is told so even if the host has a new session: its tokens are old.
    const state = record.state === 'fenced' ? 'fenced' : this.member.state;
    return { state, validUntil: record.state === 'live' && state !== 'fenced' ? this.member.validUntil : 0, locks };
  }

  private clusterMember(ctx: ConnectionContext): ClusterMember {
    if (ctx.restricted) throw new BatonError('DENIED', 'a restricted connection may not read or change the cluster');
    if (!this.member) throw new BatonError('INVALID_REQUEST', 'this agent has no cluster configured (no etcd section)');
    return this.member;
  }

  private async fenceHost(ctx: ConnectionContext, p: AgentParsedParams<'fenceHost'>): Promise<AgentResult<'fenceHost'>> {
    const member = this.clusterMember(ctx);
    if (p.host === this.config.hostId) throw new BatonError('INVALID_REQUEST', 'a host cannot declare itself fenced; run this on another host');
    const by = { host: this.config.hostId, ...(ctx.peer ? { uid: ctx.peer.uid, pid: ctx.peer.pid } : {}) };
    this.log.warn({ audit: 'fence-host', host: p.host, by, reason: p.reason }, `operator declares host ${p.host} dead and fenced: ${p.reason}`);
    const result = await member.view.fenceHost(p.host, by, p.reason);
    this.log.warn({ audit: 'fence-host', host: p.host, released: result.released, record: result.audit }, `released ${result.released} lease(s) of host ${p.host}`);
    return { host: p.host, ...result };
  }

  private inquire(ctx: ConnectionContext, p: AgentParsedParams<'inquire'>): AgentResult<'inquire'> {
    const target = p.owner ?? ctx.ownerUuid;
    if (target === undefined) throw new BatonError('NOT_REGISTERED', 'name an owner, or register one on this connection');
    if (ctx.restricted && target !== ctx.ownerUuid) throw new BatonError('DENIED', 'a restricted connection may inquire only its own owner');
    const record = this.registry.get(target);
    if (!record) throw new BatonError('NOT_REGISTERED', `owner ${target} is not registered on this host`, { details: { owner: target } });
    return { kind: 'baton.lock-state', version: 1, host: this.config.hostId, owner: record.owner, liveness: record.liveness, locks: this.locks.grantsOf(record.owner.uuid) };
  }

  private listLocks(ctx: ConnectionContext): AgentResult<'locks'> {
    if (ctx.restricted) throw new BatonError('DENIED', 'a restricted connection may not list other owners’ locks');
    const ownerInfo = (uuid: string): { uuid: string; name: string; pid?: number } => {
      const o = this.registry.get(uuid)?.owner;
      return { uuid, name: o?.name ?? '?', ...(o?.pid === undefined ? {} : { pid: o.pid }) };
    };
    return {
      host: this.config.hostId,
      lockspaces: this.locks.allLockspaces().map((l) => ({ name: l.name, kind: l.kind, ...(l.dir === undefined ? {} : { dir: l.dir }) })),
      locks: this.locks.list().map(({ grant, owner }) => ({ ...grant, owner: ownerInfo(owner) })),
    };
  }

  private shutdown(ctx: ConnectionContext, p: AgentParsedParams<'shutdown'>): AgentResult<'shutdown'> {
    if (ctx.restricted) throw new BatonError('DENIED', 'a restricted connection may not stop the agent');
    const held = this.locks.size;
    if (held > 0 && !p.releaseAll) {
      throw new BatonError('LOCKS_HELD', `${held} lock(s) are held; stopping would leave running VMs unprotected. Pass releaseAll to drop them on purpose`, { details: { held } });
    }
    // Reply first, then stop: the client learns what happened.
    setImmediate(() => {
      this.close().catch((err: unknown) => this.log.error({ err }, 'shutdown failed'));
    });
    return { released: held };
  }

  /**
   * SIGTERM's answer. With locks held, a plain stop would hand running VMs' disks to anyone
   * (virtlockd's SIGTERM kills its VMs; its SIGKILL leaves them unprotected): refuse, loudly.
   */
  requestStop(signal: string): boolean {
    const held = this.locks.size;
    if (held > 0) {
      this.log.error(
        { code: 'LOCKS_HELD', held, signal },
        `${signal} refused: ${held} lock(s) held. Upgrade with SIGUSR1 (locks kept), or stop on purpose with \`baton agent stop --release-all\``,
      );
      return false;
    }
    this.close().catch((err: unknown) => this.log.error({ err }, 'stop failed'));
    return true;
  }

  private connectionClosed(conn: ClientConnection): void {
    if (this.state === 'closed' || conn.ownerUuid === undefined) return;
    const record = this.registry.get(conn.ownerUuid);
    if (!record || record.liveness !== 'connection' || record.connection !== conn.id) return;
    if (this.locks.holdsAny(record.owner.uuid)) {
      this.monitor.terminate(record, 'connection closed');
    } else {
      this.registry.remove(record.owner.uuid);
    }
  }

  private ownerGone(record: OwnerRecord, why: string): void {
    const released = this.locks.release(record.owner.uuid);
    this.cluster?.releaseLater(record.owner.uuid, released);
    this.registry.remove(record.owner.uuid);
    this.metrics.releases.inc({ reason: 'owner-gone' }, released.length);
    this.log.info({ owner: record.owner, released, why }, `owner ${record.owner.name} is gone (${why}); released ${released.length} lock(s)`);
  }

  /**
   * Replace this process image with the same program (an upgrade), keeping every lock held:
   * seed 001's re-exec. Returns only if the exec failed, with everything still held and served.
   */
  async reexec(): Promise<void> {
    if (this.state !== 'serving' && this.state !== 'degraded') return;
    const previous = this.state;
    this.state = 're-executing';
    this.server.pause();
    try {
      await this.server.flushAll(AbortSignal.timeout(2000));
    } catch {
      this.log.warn('some replies were not flushed before re-exec; their clients will retry');
    }
    try {
      // The new image does not know which lock files this one kept for reuse.
      this.locks.removeUnusedLockFiles();
      reexecImage({
        stateDir: this.config.stateDir,
        generation: this.generation,
        locks: this.locks,
        nextToken: this.tokens.nextToken,
        owners: this.registry.all(),
        server: this.server,
        log: this.log,
        cluster: this.member && { session: this.member.session.id, validUntil: this.member.validUntil },
      });
    } catch (err) {
      this.log.error({ err }, 're-exec failed; still running the old image with every lock held');
      this.state = previous;
      this.server.resume();
    }
  }

  /**
   * Stop serving and release everything held. Only reached with no locks held, or when an operator
   * asked to drop them (shutdown with releaseAll), or when an embedding program disposes of the agent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.state = 'stopping';
      this.monitor.close();
      await this.vms?.close();
      this.driver?.close();
      await this.bus?.close();
      await this.server.close();
      const held = this.locks.size;
      for (const r of this.registry.all()) {
        const released = this.locks.release(r.owner.uuid);
        await this.cluster?.release(r.owner.uuid, released);
      }
      this.fencer?.close();
      await this.cluster?.close();
      // Nothing is held any more: the session goes at once, the host leaves the cluster cleanly.
      await this.member?.close({ revoke: true }).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'could not revoke the cluster session; it expires by itself'));
      await this.httpServer?.close();
      this.locks.close();
      this.state = 'closed';
      this.log.info({ released: held }, 'agent stopped');
      this.stopped.resolve();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
