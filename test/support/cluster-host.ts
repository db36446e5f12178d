import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { AgentProcess, type SharedStorage } from './agent-process.js';

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
