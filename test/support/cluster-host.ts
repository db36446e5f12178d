import { mkdirSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { AgentProcess, SharedStorage } from './agent-process.js';

/** A fresh cluster name, so tests sharing one etcd never see each other's keys. */
export function clusterName(): string {
  return `c${randomUUID().slice(0, 8)}`;
}

export interface ClusterHostEtcd {
  endpoints: string[];
  cluster: string;
  ttlSeconds: number;
}

/**
 * An agent process that is one host of a cluster, with a lock directory of its own: the hosts
 * share the images but not the lock files, so only etcd stands between them.
 */
export async function startClusterHost(storage: SharedStorage, hostId: string, etcd: ClusterHostEtcd): Promise<AgentProcess> {
  const lockDir = join(storage.root, `locks-${hostId}`);
  mkdirSync(lockDir, { recursive: true });
  return AgentProcess.start({
    storage,
    hostId,
    config: {
      lockspaces: [{ name: 'images', kind: 'indirect', dir: lockDir, roots: [storage.imagesDir] }],
      etcd: { endpoints: etcd.endpoints, cluster: etcd.cluster, ttlSeconds: etcd.ttlSeconds },
    },
  });
}

/**
 * Host-a and host-b of a fresh cluster on one shared storage, each with a lock directory of its
 * own; host-a may reach etcd through other endpoints (a proxy the test faults).
 */
export class TwoHosts implements AsyncDisposable {
  private constructor(
    readonly storage: SharedStorage,
    readonly cluster: string,
    readonly a: AgentProcess,
    readonly b: AgentProcess,
  ) {}

  static async start(endpoints: string[], ttlSeconds: number, aEndpoints = endpoints): Promise<TwoHosts> {
    const storage = await SharedStorage.create();
    const cluster = clusterName();
    try {
      const a = await startClusterHost(storage, 'host-a', { endpoints: aEndpoints, cluster, ttlSeconds });
      try {
        return new TwoHosts(storage, cluster, a, await startClusterHost(storage, 'host-b', { endpoints, cluster, ttlSeconds }));
      } catch (err) {
        await a.close();
        throw err;
      }
    } catch (err) {
      await storage[Symbol.asyncDispose]();
      throw err;
    }
  }

  /** A disk image on the shared storage, by its canonical path (the lease's resource). */
  disk(name: string): string {
    return realpathSync(this.storage.image(name));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.b.close();
    await this.a.close();
    await this.storage[Symbol.asyncDispose]();
  }
}
