import { connect, createServer, type Server, type Socket } from 'node:net';
import { assertLoopback, LOOPBACK } from './ports.js';
import { Connection, LinkDirection } from './tcp-link.js';

export { LinkDirection, type FlowMode } from './tcp-link.js';

export interface TcpProxyOptions {
  /** The server behind the proxy; loopback only. */
  target: { host?: string; port: number };
}

/** A TCP proxy on a random loopback port in front of one target, a link the tests can fault. */
export class TcpProxy implements AsyncDisposable {
  readonly port: number;
  readonly targetHost: string;
  readonly targetPort: number;
  /** Bytes from the client to the target. */
  readonly toTarget = new LinkDirection('client→target');
  /** Bytes from the target back to the client. */
  readonly toClient = new LinkDirection('target→client');
  readonly #server: Server;
  readonly #connections = new Set<Connection>();
  #cut = false;
  #closing: Promise<void> | undefined;

  private constructor(server: Server, port: number, host: string, targetPort: number) {
    this.#server = server;
    this.port = port;
    this.targetHost = host;
    this.targetPort = targetPort;
    server.on('connection', (client) => this.#accept(client));
  }

  static async start(options: TcpProxyOptions): Promise<TcpProxy> {
    const host = options.target.host ?? LOOPBACK;
    assertLoopback(host);
    const server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, LOOPBACK, () => {
        const address = server.address();
        if (address === null || typeof address === 'string') reject(new Error('proxy has no TCP address'));
        else resolve(address.port);
      });
    });
    return new TcpProxy(server, port, host, options.target.port);
  }

  /** `127.0.0.1:PORT`, to give clients instead of the target's address. */
  get hostPort(): string {
    return `${LOOPBACK}:${this.port}`;
  }
  get connectionCount(): number {
    return this.#connections.size;
  }
  get isCut(): boolean {
    return this.#cut;
  }

  /** Delays both directions by `ms`. */
  delay(ms: number): void {
    this.toTarget.delay(ms);
    this.toClient.delay(ms);
  }
  blackhole(): void {
    this.toTarget.blackhole();
    this.toClient.blackhole();
  }
  pause(): void {
    this.toTarget.pause();
    this.toClient.pause();
  }
  /**
   * Resets every open connection and resets each new one as soon as it is accepted, until heal().
   * TCP has no one-way reset, so a cut is of the whole link.
   */
  cut(): void {
    this.#cut = true;
    for (const connection of [...this.#connections]) connection.reset();
  }
  /** Undoes every fault in both directions. */
  heal(): void {
    this.#cut = false;
    this.toTarget.heal();
    this.toClient.heal();
  }

  /** Stops listening and resets every connection; idempotent. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      for (const connection of [...this.#connections]) connection.reset();
    });
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #accept(client: Socket): void {
    if (this.#cut || this.#closing !== undefined) {
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    const upstream = connect({ host: this.targetHost, port: this.targetPort, allowHalfOpen: true, noDelay: true });
    const connection: Connection = new Connection(client, upstream, this.toTarget, this.toClient, () =>
      this.#connections.delete(connection),
    );
    this.#connections.add(connection);
  }
}
