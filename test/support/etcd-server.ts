import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { EtcdMember, findLeader, peerUrl, type EtcdTlsOptions, type LeaderOptions } from './etcd-member.js';
import { startWithPortRetry, type ReadyOptions } from './local-server.js';
import { freePorts } from './ports.js';
import { makeTempDir, removeDir } from './temp-dir.js';

export { EtcdMember, findLeader, type EtcdTlsOptions, type LeaderOptions } from './etcd-member.js';

export interface EtcdServerOptions {
  /** Use this data dir (kept on close) instead of a fresh temporary one (removed on close). */
  dataDir?: string;
  /** @default DEFAULT_START_TIMEOUT_MS */
  startTimeoutMs?: number;
  /** Serve clients over TLS on `https://127.0.0.1:<port>` (see EtcdTlsOptions). */
  tls?: EtcdTlsOptions;
  /** More etcd flags, appended to the harness's own. */
  extraArgs?: readonly string[];
}

/** A single-member etcd on random loopback ports. */
export class EtcdServer extends EtcdMember {
  static async start(options: EtcdServerOptions = {}): Promise<EtcdServer> {
    const ready: ReadyOptions = options.startTimeoutMs === undefined ? {} : { deadlineMs: options.startTimeoutMs };
    return startWithPortRetry(
      async () => {
        const [clientPort, peerPort] = await freePorts(2);
        if (clientPort === undefined || peerPort === undefined) throw new Error('no free ports');
        const root = options.dataDir === undefined ? await makeTempDir('etcd') : undefined;
        const server = new EtcdServer({
          memberName: 'm1',
          clientPort,
          peerPort,
          dataDir: options.dataDir ?? join(root ?? '', 'data'),
          initialCluster: `m1=${peerUrl(peerPort)}`,
          clusterToken: `baton-test-${randomUUID()}`,
          ...(options.tls === undefined ? {} : { tls: options.tls }),
          ...(options.extraArgs === undefined ? {} : { extraArgs: options.extraArgs }),
        });
        if (root !== undefined) server.ownedDirs.push(root);
        return server;
      },
      (server) => server.start(ready),
    );
  }

  /** This member, once it has elected itself. */
  leader(options: LeaderOptions = {}): Promise<EtcdMember> {
    return findLeader([this], options);
  }
}

export interface EtcdClusterOptions {
  /** @default 3 */
  members?: number;
  /** @default DEFAULT_START_TIMEOUT_MS */
  startTimeoutMs?: number;
}

/** A multi-member etcd cluster on loopback, every member with its own random ports and data dir. */
export class EtcdCluster implements AsyncDisposable {
  readonly members: readonly EtcdMember[];
  readonly #root: string;
  #closing: Promise<void> | undefined;

  private constructor(members: readonly EtcdMember[], root: string) {
    this.members = members;
    this.#root = root;
  }

  static async start(options: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const count = options.members ?? 3;
    if (!Number.isInteger(count) || count < 1) throw new Error(`members must be a positive integer, not ${count}`);
    const ready: ReadyOptions = options.startTimeoutMs === undefined ? {} : { deadlineMs: options.startTimeoutMs };
    return startWithPortRetry(
      async () => {
        const ports = await freePorts(count * 2);
        const root = await makeTempDir('etcd-cluster');
        const names = Array.from({ length: count }, (_, i) => `m${i + 1}`);
        const port = (i: number): number => ports[i] ?? Number.NaN;
        const initialCluster = names.map((name, i) => `${name}=${peerUrl(port(2 * i + 1))}`).join(',');
        const clusterToken = `baton-test-${randomUUID()}`;
        const members = names.map(
          (memberName, i) =>
            new EtcdMember({
              memberName,
              clientPort: port(2 * i),
              peerPort: port(2 * i + 1),
              dataDir: join(root, memberName),
              initialCluster,
              clusterToken,
            }),
        );
        return new EtcdCluster(members, root);
      },
      async (cluster) => {
        // No member is healthy before a quorum runs, so start them all before probing any.
        await Promise.all(cluster.members.map((member) => member.spawn()));
        await Promise.all(cluster.members.map((member) => member.waitReady(ready)));
      },
    );
  }

  /** Every member's client URL. */
  get endpoints(): string[] {
    return this.members.map((member) => member.clientUrl);
  }

  /** The first member's client URL. */
  get clientUrl(): string {
    return this.member(0).clientUrl;
  }

  member(index: number): EtcdMember {
    const member = this.members[index];
    if (member === undefined) throw new Error(`no member ${index} in a cluster of ${this.members.length}`);
    return member;
  }

  /** The member that currently leads; waits for an election if none does. */
  leader(options: LeaderOptions = {}): Promise<EtcdMember> {
    return findLeader(this.members, options);
  }

  /** Tears every member down with SIGKILL (a graceful stop can hang with peers gone); idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.all(this.members.map((member) => member.close()));
      await removeDir(this.#root);
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
