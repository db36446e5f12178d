import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { afterAll, beforeAll } from 'vitest';
import { isSettled, type ClusterLease, type DefineAnswer, type ErrorBody, type HostedVm, type MigrationPhase, type MigrationRecord, type VmDefinitionInput, type VmSpecInput } from '@baton/core';
import { CoordinatorConfigSchema, CoordinatorService, type CoordinatorConfigInput, type Log } from '@baton/coordinator';
import { SimDriver } from '@baton/agent';
import { Bus, BusConfigSchema } from '@baton/bus';
import type { EtcdConnection } from '@baton/etcd';
import { AgentProcess, SharedStorage } from './agent-process.js';
import { startServers, type ServerSpec, type StartedServers } from './containers.js';
import { clusterName } from './cluster-host.js';
import { connectEtcd } from './etcd-session.js';
import { httpJson, type HttpJsonResponse } from './http-json.js';
import { waitFor } from './wait-for.js';

export interface MigrationClusterOptions {
  etcd: string[];
  nats: string[];
  hosts?: string[];
  ttlSeconds?: number;
}

/** Fields of a coordinator's configuration a test may replace; etcd and nats merge field by field. */
export type CoordinatorOverrides = Omit<Partial<CoordinatorConfigInput>, 'etcd' | 'nats'> & {
  etcd?: Partial<CoordinatorConfigInput['etcd']>;
  nats?: Partial<CoordinatorConfigInput['nats']>;
};

const ONE_ETCD_AND_NATS = { etcd: {}, nats: { jetstream: true } } satisfies ServerSpec;

/**
 * The servers of a test file (by default one etcd and NATS with JetStream), started before its
 * tests and stopped after them. The object is filled in when they have started.
 */
export function migrationServers<S extends ServerSpec = typeof ONE_ETCD_AND_NATS>(spec: S = ONE_ETCD_AND_NATS as ServerSpec as S): StartedServers<S> {
  const servers = {} as StartedServers<S>;
  beforeAll(async () => {
    Object.assign(servers, await startServers(spec));
  });
  afterAll(async () => {
    await servers.close?.();
  });
  return servers;
}

/**
 * One migration cluster for a test file, on its own etcd and NATS: started before the file's tests
 * with one coordinator (`coord-1`) leading, stopped after them.
 */
export function migrationFile(options: { ttlSeconds?: number } = {}): { readonly servers: ReturnType<typeof migrationServers>; readonly mc: MigrationCluster } {
  const servers = migrationServers();
  const file = { servers } as { servers: ReturnType<typeof migrationServers>; mc: MigrationCluster };
  beforeAll(async () => {
    file.mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url], ...options });
    await file.mc.addCoordinator('coord-1');
    await file.mc.leader();
  });
  afterAll(async () => {
    await file.mc?.[Symbol.asyncDispose]();
  });
  return file;
}

/** A coordinator log that drops everything. */
export const quiet: Log = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

/**
 * A cluster for migrations: agent processes as hosts (sim hypervisor, NATS, one shared storage
 * and one shared lock directory, as hosts sharing a lockspace would), and coordinator replicas
 * in this process. Everything on loopback.
 */
export class MigrationCluster implements AsyncDisposable {
  readonly coordinators: CoordinatorService[] = [];
  private readonly drivers = new Map<string, SimDriver>();

  private constructor(
    readonly opts: Required<MigrationClusterOptions>,
    readonly storage: SharedStorage,
    readonly cluster: string,
    readonly agents: Map<string, AgentProcess>,
  ) {}

  static async start(options: MigrationClusterOptions): Promise<MigrationCluster> {
    const opts = { hosts: ['host-a', 'host-b'], ttlSeconds: 3, ...options };
    const storage = await SharedStorage.create();
    const cluster = clusterName();
    const mc = new MigrationCluster(opts, storage, cluster, new Map());
    try {
      for (const host of opts.hosts) {
        mc.agents.set(
          host,
          await AgentProcess.start({
            storage,
            hostId: host,
            config: {
              etcd: { endpoints: opts.etcd, cluster, ttlSeconds: opts.ttlSeconds },
              nats: { servers: opts.nats, cluster },
              hypervisor: { driver: 'sim' },
            },
          }),
        );
      }
    } catch (err) {
      await mc[Symbol.asyncDispose]();
      throw err;
    }
    return mc;
  }

  /**
   * A replica's configuration on this cluster. `overrides` replace fields (etcd and nats are merged
   * field by field), e.g. endpoints through a proxy or shorter step deadlines for a fault test.
   */
  coordinatorConfig(id: string, overrides: CoordinatorOverrides = {}): ReturnType<typeof CoordinatorConfigSchema.parse> {
    const { etcd, nats, ...rest } = overrides;
    return CoordinatorConfigSchema.parse({
      id,
      http: { host: '127.0.0.1', port: 0 },
      stepTimeoutMs: 2_000,
      sendTimeoutMs: 10_000,
      ...rest,
      etcd: { endpoints: this.opts.etcd, cluster: this.cluster, ttlSeconds: this.opts.ttlSeconds, ...etcd },
      nats: { servers: this.opts.nats, cluster: this.cluster, ...nats },
    });
  }

  /** A plain etcd connection to this cluster (its endpoints, TTL and key prefix), for a test to watch or write with. */
  connectEtcd(): EtcdConnection {
    return connectEtcd(this.opts.etcd, this.opts.ttlSeconds, this.cluster);
  }

  /** A NATS connection on this cluster's subjects, for a test to send agents commands with. */
  connectBus(name: string): Promise<Bus> {
    return Bus.connect(BusConfigSchema.parse({ servers: this.opts.nats, cluster: this.cluster }), name);
  }

  /** A coordinator replica in this process; resolves once it serves HTTP (it may not lead yet). */
  async addCoordinator(id = `coord-${this.coordinators.length + 1}`, log: Log = quiet, overrides: CoordinatorOverrides = {}): Promise<CoordinatorService> {
    const service = await CoordinatorService.start({ config: this.coordinatorConfig(id, overrides), log });
    this.coordinators.push(service);
    return service;
  }

  /** The replica that leads now. */
  async leader(deadlineMs = 10_000): Promise<CoordinatorService> {
    return waitFor(() => this.coordinators.find((c) => c.coordinator.isLeader) ?? false, { what: 'a coordinator leader', deadlineMs });
  }

  agent(host: string): AgentProcess {
    const a = this.agents.get(host);
    if (!a) throw new Error(`no host ${host}`);
    return a;
  }

  /** A disk image on the shared storage, by its canonical path (the lease's resource). */
  disk(name: string): string {
    return realpathSync(this.storage.image(name));
  }

  /** Start a sim VM on `host` through the coordinator's API. */
  async startVm(host: string, name: string, disks: string[], extra: Partial<VmSpecInput> = {}): Promise<HostedVm> {
    const c = await this.leader();
    return c.coordinator.startVm(host, { uuid: randomUUID(), name, disks: disks.map((d) => ({ path: this.disk(d) })), ...extra });
  }

  /** The sim driver of a host (fault injection, the VM's state as its hypervisor sees it). */
  driver(host: string): SimDriver {
    let driver = this.drivers.get(host);
    if (driver === undefined) {
      driver = new SimDriver(this.agent(host).stateDir, host);
      this.drivers.set(host, driver);
    }
    return driver;
  }

  /** POST /v1/migrations on any replica: the record as accepted (phase `begun`). */
  async startMigration(vm: string, to: string): Promise<MigrationRecord> {
    const via = this.coordinators[0]!;
    const res = await httpJson<MigrationRecord | { error: { code: string; message: string } }>(`${via.url}/v1/migrations`, { method: 'POST', body: { vm, to } });
    if (res.status !== 202) throw new Error(`POST /v1/migrations: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body as MigrationRecord;
  }

  /** POST /v1/migrations on any replica, then wait until the record is settled. */
  async migrate(vm: string, to: string, deadlineMs = 20_000): Promise<MigrationRecord> {
    return this.settled((await this.startMigration(vm, to)).id, deadlineMs);
  }

  /** The record once it is in `phase` (a slow send keeps it in `performing`). */
  inPhase(id: string, phase: MigrationPhase, deadlineMs = 10_000): Promise<MigrationRecord> {
    return this.recordWhen(id, (r) => r.phase === phase, `in ${phase}`, deadlineMs);
  }

  /** A migration's record as etcd has it now (read through the first replica). */
  async record(id: string): Promise<MigrationRecord | undefined> {
    return (await this.coordinators[0]!.coordinator.store.get(id))?.record;
  }

  /** The record as etcd has it, once `ready` says so. */
  private recordWhen(id: string, ready: (record: MigrationRecord) => boolean, what: string, deadlineMs: number): Promise<MigrationRecord> {
    return waitFor(
      async () => {
        const record = await this.record(id);
        return record && ready(record) ? record : false;
      },
      { what: `migration ${id} ${what}`, deadlineMs },
    );
  }

  /** Stop a replica this cluster started; the others go on (the next one leads). */
  async closeCoordinator(service: CoordinatorService): Promise<void> {
    this.coordinators.splice(this.coordinators.indexOf(service), 1);
    await service.close();
  }

  /** PUT /v1/vms/:vm/definition on a replica (the first unless said): the answer as sent. */
  define(vm: string, definition: VmDefinitionInput, via = this.coordinators[0]!): Promise<HttpJsonResponse<DefineAnswer | { error: ErrorBody }>> {
    return httpJson(`${via.url}/v1/vms/${encodeURIComponent(vm)}/definition`, { method: 'PUT', body: definition, timeoutMs: 15_000 });
  }

  /** A VM's leases as GET /v1/leases shows them: resource → [host, token]. */
  async leaseMap(uuid: string): Promise<Record<string, [string, number]>> {
    return Object.fromEntries((await this.leases(uuid)).map((l) => [l.resource, [l.host, l.token]]));
  }

  /** A VM's leases as GET /v1/leases shows them, by resource. */
  async leases(uuid: string): Promise<ClusterLease[]> {
    const res = await httpJson<{ leases: ClusterLease[] }>(`${this.coordinators[0]!.url}/v1/leases`);
    return res.body.leases.filter((l) => l.owner.uuid === uuid).sort((a, b) => a.resource.localeCompare(b.resource));
  }

  settled(id: string, deadlineMs = 20_000): Promise<MigrationRecord> {
    return this.recordWhen(id, isSettled, 'to end', deadlineMs);
  }

  /**
   * The copies of one VM as each host's hypervisor reports them (host → state), read from the sim
   * driver directly: it needs no coordinator, and sees a host whose agent is down.
   */
  async copies(uuid: string): Promise<Record<string, string>> {
    const found = await Promise.all([...this.agents.keys()].map(async (host) => [host, (await this.driver(host).find(uuid))?.state] as const));
    return Object.fromEntries(found.flatMap(([host, state]) => (state === undefined ? [] : [[host, state]])));
  }

  /** Where the VMs run, by their hosts' agents. */
  async vms(): Promise<HostedVm[]> {
    return (await this.leader()).coordinator.vms();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const c of this.coordinators.splice(0)) await c.close();
    // VMs are detached processes: destroy them before their agents' state dirs go.
    for (const [host, agent] of this.agents) {
      const driver = this.driver(host);
      for (const vm of await driver.list().catch(() => [])) await driver.destroy(vm.uuid).catch(() => undefined);
      driver.close();
      await agent.close();
    }
    await this.storage[Symbol.asyncDispose]();
  }
}

