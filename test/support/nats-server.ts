import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findBinary } from './binaries.js';
import { httpJson } from './http-json.js';
import { LocalServer, startWithPortRetry, type LaunchSpec } from './local-server.js';
import { freePorts, LOOPBACK } from './ports.js';
import { TcpClient } from './tcp-client.js';
import { makeTempDir } from './temp-dir.js';

export interface NatsServerOptions {
  /** Enable JetStream (`-js`) with a temporary store dir. @default false */
  jetstream?: boolean;
  /**
   * nats-server configuration text (an `authorization` block, a `tls` block, ...), written to a
   * file (mode 0600: it may hold passwords) passed with `-c`. The command-line flags the harness
   * passes (address, ports, name, JetStream) take precedence over it.
   */
  config?: string;
  /** @default DEFAULT_START_TIMEOUT_MS */
  startTimeoutMs?: number;
}

/** The fields of the INFO line a NATS server sends on connect that tests look at. */
export interface NatsInfo {
  server_id: string;
  server_name?: string;
  version: string;
  port: number;
  jetstream?: boolean;
  [field: string]: unknown;
}

interface NatsConfig {
  port: number;
  monitorPort: number;
  storeDir: string | undefined;
  configFile: string | undefined;
}

/** Reads the INFO line a NATS server sends first on every client connection. */
export async function readNatsInfo(port: number, signal?: AbortSignal): Promise<NatsInfo> {
  await using client = await TcpClient.connect(port, signal === undefined ? {} : { signal });
  const line = await client.readLine(signal);
  if (!line.startsWith('INFO ')) throw new Error(`expected INFO from nats on :${port}, got ${line.slice(0, 80)}`);
  return JSON.parse(line.slice('INFO '.length)) as NatsInfo;
}

/** A nats-server on random loopback client and monitoring ports; restart() keeps both and the store. */
export class NatsServer extends LocalServer {
  readonly name: string;
  readonly port: number;
  readonly monitorPort: number;
  /** `nats://127.0.0.1:PORT` */
  readonly url: string;
  /** `http://127.0.0.1:MONITOR_PORT` */
  readonly monitorUrl: string;
  /** JetStream's store dir, when JetStream is on. */
  readonly storeDir: string | undefined;
  /** The file given with `-c`, when the server was started with a configuration. */
  readonly configFile: string | undefined;
  readonly #binary: string;

  private constructor(config: NatsConfig) {
    super();
    this.#binary = findBinary('nats-server');
    this.port = config.port;
    this.monitorPort = config.monitorPort;
    this.storeDir = config.storeDir;
    this.configFile = config.configFile;
    this.url = `nats://${LOOPBACK}:${config.port}`;
    this.monitorUrl = `http://${LOOPBACK}:${config.monitorPort}`;
    this.name = `nats-server ${this.url}`;
  }

  static async start(options: NatsServerOptions = {}): Promise<NatsServer> {
    return startWithPortRetry(
      async () => {
        const [port, monitorPort] = await freePorts(2);
        if (port === undefined || monitorPort === undefined) throw new Error('no free ports');
        const storeDir = options.jetstream === true ? await makeTempDir('nats') : undefined;
        const configDir = options.config === undefined ? undefined : await makeTempDir('nats-conf');
        const configFile = configDir === undefined ? undefined : join(configDir, 'nats-server.conf');
        const server = new NatsServer({ port, monitorPort, storeDir, configFile });
        for (const dir of [storeDir, configDir]) if (dir !== undefined) server.ownedDirs.push(dir);
        if (configFile !== undefined) writeFileSync(configFile, options.config ?? '', { mode: 0o600 });
        return server;
      },
      (server) => server.start(options.startTimeoutMs === undefined ? {} : { deadlineMs: options.startTimeoutMs }),
    );
  }

  /** `tls://127.0.0.1:PORT`: the same port, for a client that insists on TLS (NATS upgrades the connection after its greeting). */
  get tlsUrl(): string {
    return `tls://${this.hostPort}`;
  }

  /** `host:port`, as most NATS clients take their servers. */
  get hostPort(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  info(signal?: AbortSignal): Promise<NatsInfo> {
    return readNatsInfo(this.port, signal);
  }

  protected spec(): LaunchSpec {
    const args = [...(this.configFile === undefined ? [] : ['-c', this.configFile]), '-a', LOOPBACK, '-p', String(this.port), '-m', String(this.monitorPort), '-n', `baton-test-${this.port}`];
    if (this.storeDir !== undefined) args.push('-js', '-sd', this.storeDir);
    return { command: this.#binary, args };
  }

  protected async probe(signal: AbortSignal): Promise<void> {
    // /healthz also waits for JetStream to be ready when it is enabled.
    const health = await httpJson<{ status?: string; error?: string }>(`${this.monitorUrl}/healthz`, { signal });
    if (health.status !== 200 || health.body?.status !== 'ok') {
      throw new Error(`${this.monitorUrl}/healthz: ${health.status} ${JSON.stringify(health.body)}`);
    }
    await this.info(signal);
  }
}
