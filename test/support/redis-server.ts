import { findBinary } from './binaries.js';
import { LocalServer, startWithPortRetry, type LaunchSpec } from './local-server.js';
import { freePort, LOOPBACK } from './ports.js';
import { encodeCommand, parseReply, RespError, type RespValue } from './resp.js';
import { TcpClient } from './tcp-client.js';
import { makeTempDir } from './temp-dir.js';

export interface RedisServerOptions {
  /** @default DEFAULT_START_TIMEOUT_MS */
  startTimeoutMs?: number;
}

/** Sends one command on a fresh connection and returns the raw reply; error replies throw. */
export async function redisCommand(port: number, args: readonly (string | number)[], signal?: AbortSignal): Promise<RespValue> {
  await using client = await TcpClient.connect(port, signal === undefined ? {} : { signal });
  client.write(encodeCommand(...args));
  const reply = await client.read(parseReply, signal);
  if (reply instanceof RespError) throw reply;
  return reply;
}

/** A redis-server on a random loopback port with no persistence; restart() keeps the port. */
export class RedisServer extends LocalServer {
  readonly name: string;
  readonly port: number;
  /** `redis://127.0.0.1:PORT` */
  readonly url: string;
  readonly dir: string;
  readonly #binary: string;

  private constructor(port: number, dir: string) {
    super();
    this.#binary = findBinary('redis-server');
    this.port = port;
    this.dir = dir;
    this.url = `redis://${LOOPBACK}:${port}`;
    this.name = `redis-server ${this.url}`;
  }

  static async start(options: RedisServerOptions = {}): Promise<RedisServer> {
    return startWithPortRetry(
      async () => {
        const port = await freePort();
        const dir = await makeTempDir('redis');
        const server = new RedisServer(port, dir);
        server.ownedDirs.push(dir);
        return server;
      },
      (server) => server.start(options.startTimeoutMs === undefined ? {} : { deadlineMs: options.startTimeoutMs }),
    );
  }

  /** `host:port` */
  get hostPort(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  /** One command on a fresh connection, e.g. `command('SET', 'k', 'v')` → `'OK'`. */
  command(...args: readonly (string | number)[]): Promise<RespValue> {
    return redisCommand(this.port, args);
  }

  protected spec(): LaunchSpec {
    return {
      command: this.#binary,
      // Persistence off: tests want a clean server, and an RDB save on SIGTERM would slow stop().
      args: ['--port', String(this.port), '--bind', LOOPBACK, '--save', '', '--appendonly', 'no', '--dir', this.dir],
    };
  }

  protected async probe(signal: AbortSignal): Promise<void> {
    const reply = await redisCommand(this.port, ['PING'], signal);
    if (reply !== 'PONG') throw new Error(`PING answered ${JSON.stringify(reply)}`);
  }
}
