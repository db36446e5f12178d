import { asBatonError, leaseTiming, systemClock, type MonotonicClock } from '@baton/core';
import { EtcdConfigSchema, EtcdConnection, HostSession, type SessionLog, type SessionPhase } from '@baton/etcd';
import { clusterName } from './cluster-host.js';

/** A session log that says nothing: tests read phases and outcomes, not log lines. */
export const quietLog: SessionLog = { info: () => undefined, warn: () => undefined, error: () => undefined };

/** A connection to `endpoints` under a cluster name of its own. */
export function connectEtcd(endpoints: string[], ttlSeconds = 3, cluster = clusterName()): EtcdConnection {
  return new EtcdConnection(EtcdConfigSchema.parse({ endpoints, cluster, ttlSeconds }));
}

export interface TestSessionOptions {
  clock?: MonotonicClock;
  /** Receives every phase the session goes through. */
  phases?: SessionPhase[];
  adopt?: string;
  /** The session this one replaces (lost; its host record may still live): as an agent's recovery opens it. */
  supersedes?: string;
  log?: SessionLog;
  lockspaces?: string[];
}

/** A host session opened in the test process: a simulated host without an agent. */
export function openSession(conn: EtcdConnection, host: string, opts: TestSessionOptions = {}): Promise<HostSession> {
  const ttlSeconds = conn.config.ttlSeconds;
  return HostSession.open({
    conn,
    clock: opts.clock ?? systemClock,
    timing: leaseTiming(ttlSeconds),
    log: opts.log ?? quietLog,
    record: { host, address: '127.0.0.1:0', version: 'test', pid: process.pid, lockspaces: opts.lockspaces ?? ['disks'], startedAt: 'now', ttlSeconds },
    adopt: opts.adopt,
    supersedes: opts.supersedes,
    onPhase: (p) => opts.phases?.push(p),
  });
}

/** 'granted' if the request succeeded, else its catalogue code. */
export async function outcomeCode(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'granted',
    (err: unknown) => asBatonError(err).code,
  );
}
