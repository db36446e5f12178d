import { readFileSync } from 'node:fs';
import { findBinary } from './binaries.js';
import type { ClientTls } from './http-json.js';
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
  /** Serve the client URL over TLS (`https://`); peer URLs stay plain http on loopback. */
  tls?: EtcdTlsOptions;
  /** More etcd flags, after the harness's own (e.g. `--auth-token=simple`). */
  extraArgs?: readonly string[];
}

/**
 * TLS on an etcd member's client URL. Paths to PEM files; one CA signs the server's certificate
 * and the clients' (etcd's --trusted-ca-file), and the harness's own probes trust it.
 */
export interface EtcdTlsOptions {
  caFile: string;
  /** The server certificate; its SANs must include IP:127.0.0.1. */
  certFile: string;
  keyFile: string;
  /** `--client-cert-auth`: refuse every client that presents no certificate signed by the CA. */
  clientCertAuth?: boolean;
  /** The client certificate the harness's probes (health, status, put, get) present; needed with clientCertAuth. */
  probeCertFile?: string;
  probeKeyFile?: string;
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
  /** What the harness's own calls trust and present on an https client URL. */
  readonly clientTls: ClientTls | undefined;

  constructor(config: EtcdMemberConfig) {
    super();
    this.#binary = findBinary('etcd');
    this.#config = config;
    this.memberName = config.memberName;
    this.clientPort = config.clientPort;
    this.peerPort = config.peerPort;
    this.clientUrl = `${config.tls ? 'https' : 'http'}://${LOOPBACK}:${config.clientPort}`;
    const tls = config.tls;
    this.clientTls =
      tls === undefined
        ? undefined
        : {
            ca: readFileSync(tls.caFile),
            ...(tls.probeCertFile === undefined ? {} : { cert: readFileSync(tls.probeCertFile) }),
            ...(tls.probeKeyFile === undefined ? {} : { key: readFileSync(tls.probeKeyFile) }),
          };
    this.peerUrl = peerUrl(config.peerPort);
    this.dataDir = config.dataDir;
    this.name = `etcd ${config.memberName} (client ${this.clientUrl})`;
    this.stopGraceMs = ETCD_STOP_GRACE_MS;
  }

  /** The client URLs to give an etcd client. */
  get endpoints(): string[] {
    return [this.clientUrl];
  }

  /** The options of a harness call, with this member's client TLS when it serves https. */
  #call(options: CallOptions): CallOptions {
    return this.clientTls === undefined || options.tls !== undefined ? options : { ...options, tls: this.clientTls };
  }

  status(options: CallOptions = {}): Promise<EtcdStatus> {
    return etcdStatus(this.clientUrl, this.#call(options));
  }

  put(key: string, value: string, options: CallOptions = {}): Promise<bigint> {
    return etcdPut(this.clientUrl, key, value, this.#call(options));
  }

  get(key: string, options: CallOptions = {}): Promise<string | undefined> {
    return etcdGet(this.clientUrl, key, this.#call(options));
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
        ...(c.tls === undefined
          ? []
          : [`--cert-file=${c.tls.certFile}`, `--key-file=${c.tls.keyFile}`, `--trusted-ca-file=${c.tls.caFile}`, ...(c.tls.clientCertAuth ? ['--client-cert-auth'] : [])]),
        ...(c.extraArgs ?? []),
      ],
    };
  }

  protected probe(signal: AbortSignal): Promise<void> {
    return etcdHealth(this.clientUrl, this.#call({ signal }));
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
