import { findBinary } from './binaries.js';
import { etcdGet, etcdHealth, etcdPut, etcdStatus, type CallOptions, type EtcdStatus } from './etcd-gateway.js';
import { LocalServer, type LaunchSpec } from './local-server.js';
import { LOOPBACK } from './ports.js';
import { describe, waitFor } from './wait-for.js';

/** Raft timing for tests: elections in ~0.25–0.55 s instead of 1.1–1.4 s (DESIGN §10). */
export const ETCD_HEARTBEAT_INTERVAL_MS = 20;
export const ETCD_ELECTION_TIMEOUT_MS = 200;
/** SIGTERM to a leader whose peers are dead can hang ~7 s, so stop() escalates to SIGKILL early. */
export const ETCD_STOP_GRACE_MS = 1_000;

export interface EtcdMemberConfig {
  /** The member's etcd name, e.g. `m1`. */
  memberName: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
  /** `name=peerUrl,...` for every member of the cluster. */
  initialCluster: string;
  clusterToken: string;
}

export const peerUrl = (port: number): string => `http://${LOOPBACK}:${port}`;

/** One etcd process; it keeps its ports and data dir across restart(). */
export class EtcdMember extends LocalServer {
  readonly name: string;
  readonly memberName: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  readonly #config: EtcdMemberConfig;
  readonly #binary: string;

  constructor(config: EtcdMemberConfig) {
    super();
    this.#binary = findBinary('etcd');
    this.#config = config;
    this.memberName = config.memberName;
    this.clientPort = config.clientPort;
    this.peerPort = config.peerPort;
    this.clientUrl = `http://${LOOPBACK}:${config.clientPort}`;
    this.peerUrl = peerUrl(config.peerPort);
    this.dataDir = config.dataDir;
    this.name = `etcd ${config.memberName} (client ${this.clientUrl})`;
    this.stopGraceMs = ETCD_STOP_GRACE_MS;
  }

  /** The client URLs to give an etcd client. */
  get endpoints(): string[] {
    return [this.clientUrl];
  }

  status(options: CallOptions = {}): Promise<EtcdStatus> {
    return etcdStatus(this.clientUrl, options);
  }

  put(key: string, value: string, options: CallOptions = {}): Promise<bigint> {
    return etcdPut(this.clientUrl, key, value, options);
  }

  get(key: string, options: CallOptions = {}): Promise<string | undefined> {
    return etcdGet(this.clientUrl, key, options);
  }

  protected spec(): LaunchSpec {
    const c = this.#config;
    // ETCD_* variables would silently override the flags below.
    const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('ETCD_')));
    return {
      command: this.#binary,
      env,
      args: [
        `--name=${c.memberName}`,
        `--data-dir=${c.dataDir}`,
        `--listen-client-urls=${this.clientUrl}`,
        `--advertise-client-urls=${this.clientUrl}`,
        `--listen-peer-urls=${this.peerUrl}`,
        `--initial-advertise-peer-urls=${this.peerUrl}`,
        `--initial-cluster=${c.initialCluster}`,
        `--initial-cluster-token=${c.clusterToken}`,
        // Ignored once the data dir holds a WAL, so restart() rejoins with the same identity.
        '--initial-cluster-state=new',
        `--heartbeat-interval=${ETCD_HEARTBEAT_INTERVAL_MS}`,
        `--election-timeout=${ETCD_ELECTION_TIMEOUT_MS}`,
        '--logger=zap',
        '--log-outputs=stderr',
      ],
    };
  }

  protected probe(signal: AbortSignal): Promise<void> {
    return etcdHealth(this.clientUrl, { signal });
  }
}

export interface LeaderOptions {
  /** @default 10000 */
  deadlineMs?: number;
  signal?: AbortSignal;
}

/**
 * The running member that reports itself leader (its status' `leader` equals its own
 * `header.member_id`), waiting until one does. Followers' views are not trusted: after a leader
 * dies they name it until the election timeout passes. Should two claim it, the higher term wins.
 */
export function findLeader<M extends EtcdMember>(members: readonly M[], options: LeaderOptions = {}): Promise<M> {
  return waitFor(
    async (signal) => {
      const running = members.filter((member) => member.running);
      const results = await Promise.allSettled(running.map((member) => member.status({ signal, timeoutMs: 500 })));
      let best: { member: M; term: bigint } | undefined;
      const views: string[] = [];
      results.forEach((result, i) => {
        const member = running[i];
        if (member === undefined) return;
        if (result.status === 'rejected') {
          views.push(`${member.memberName}: ${describe(result.reason)}`);
          return;
        }
        const status = result.value;
        views.push(`${member.memberName}: follows ${status.leaderId} in term ${status.raftTerm}`);
        if (status.leaderId === status.memberId && (best === undefined || status.raftTerm > best.term)) {
          best = { member, term: status.raftTerm };
        }
      });
      if (best === undefined) throw new Error(`no running member leads (${views.join('; ') || 'none running'})`);
      return best.member;
    },
    {
      what: 'an etcd member that reports itself leader',
      deadlineMs: options.deadlineMs ?? 10_000,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    },
  );
}
