import { chmodSync, chownSync, unlinkSync } from 'node:fs';
import { connect, createServer, Socket, type Server } from 'node:net';
import { dirname } from 'node:path';
import { BatonError, MAX_LINE_BYTES } from '@baton/core';
import { makeConfiguredDir } from '../state/dirs.js';
import { peerCred, type PeerCred } from '../sys/index.js';
import { ClientConnection, handleFd, type CarriedInput } from './connection.js';
import type { Handlers } from './dispatch.js';

export interface InheritedConnection {
  id: number;
  fd: number;
  ownerUuid?: string | undefined;
  restricted: boolean;
  carried: CarriedInput;
  peer?: PeerCred | undefined;
}

export interface SocketServerOptions {
  path: string;
  mode: number;
  gid: number | undefined;
  handlers: Handlers;
  /** Who may talk to the agent, beyond what the socket's file mode already enforces. */
  allowPeer(peer: PeerCred | undefined): boolean;
  onConnectionClosed(conn: ClientConnection): void;
  /** The listening descriptor inherited across a re-exec. */
  inheritedFd?: number | undefined;
  /** Bind anew even though the path answers: it is this process's own inherited, unknown listener. */
  replaceExisting?: boolean;
  firstConnectionId?: number;
}

async function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** The agent's UNIX socket: newline-delimited JSON, one ClientConnection per client. */
export class SocketServer {
  private readonly conns = new Map<number, ClientConnection>();
  private nextId: number;

  private constructor(
    private readonly server: Server,
    private readonly opts: SocketServerOptions,
  ) {
    this.nextId = opts.firstConnectionId ?? 1;
    server.on('connection', (socket) => this.accept(socket));
  }

  static async listen(opts: SocketServerOptions): Promise<SocketServer> {
    const server = createServer({ pauseOnConnect: false });
    if (opts.inheritedFd !== undefined) {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd: opts.inheritedFd }, resolve);
      });
      return new SocketServer(server, opts);
    }
    makeConfiguredDir('socket.path', dirname(opts.path), 0o755);
    if (!opts.replaceExisting && (await answers(opts.path))) {
      throw new BatonError('UNAVAILABLE', `another agent is serving ${opts.path}; refusing to replace its socket`, { details: { socket: opts.path } });
    }
    try {
      unlinkSync(opts.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    // The socket is created with the process umask; tighten it before anyone can connect by
    // listening under a restrictive umask, then set the configured mode.
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.path, resolve);
      });
    } finally {
      process.umask(oldMask);
    }
    if (opts.gid !== undefined) chownSync(opts.path, -1, opts.gid);
    chmodSync(opts.path, opts.mode);
    return new SocketServer(server, opts);
  }

  private peerOf(socket: Socket): PeerCred | undefined {
    try {
      return peerCred(handleFd(socket));
    } catch {
      return undefined;
    }
  }

  private accept(socket: Socket, inherited?: InheritedConnection): ClientConnection {
    const id = inherited?.id ?? this.nextId++;
    const peer = inherited ? inherited.peer : this.peerOf(socket);
    const conn = new ClientConnection(socket, {
      id,
      peer,
      maxLineBytes: MAX_LINE_BYTES,
      handlers: this.opts.handlers,
      onClose: (c) => {
        this.conns.delete(c.id);
        this.opts.onConnectionClosed(c);
      },
      ...(inherited ? { carried: inherited.carried, restricted: inherited.restricted, ...(inherited.ownerUuid ? { ownerUuid: inherited.ownerUuid } : {}) } : {}),
    });
    this.conns.set(id, conn);
    if (!inherited && !this.opts.allowPeer(peer)) {
      conn.refuse(new BatonError('DENIED', `peer uid ${peer?.uid ?? 'unknown'} may not use this agent`, { details: { peer } }));
    }
    return conn;
  }

  /** Re-attach the connections a previous image handed over. */
  adopt(connections: readonly InheritedConnection[]): void {
    for (const c of connections) {
      this.nextId = Math.max(this.nextId, c.id + 1);
      this.accept(new Socket({ fd: c.fd, readable: true, writable: true }), c);
    }
  }

  connections(): ClientConnection[] {
    return [...this.conns.values()];
  }

  get nextConnectionId(): number {
    return this.nextId;
  }

  listenFd(): number {
    return handleFd(this.server as unknown as { _handle?: unknown });
  }

  /** Stop taking connections and requests (the re-exec is about to happen). */
  pause(): void {
    this.server.removeAllListeners('connection');
    this.server.on('connection', (socket) => {
      // A client that connects in the last instant before exec is closed and simply reconnects.
      socket.destroy();
    });
    for (const c of this.conns.values()) c.pause();
  }

  resume(): void {
    this.server.removeAllListeners('connection');
    this.server.on('connection', (socket) => this.accept(socket));
    for (const c of this.conns.values()) c.resume();
  }

  async flushAll(signal: AbortSignal): Promise<void> {
    await Promise.all([...this.conns.values()].map((c) => c.flushed(signal)));
  }

  /** Stop listening, remove the socket file, close every connection. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.conns.values()) c.socket.destroy();
    await closed;
    try {
      unlinkSync(this.opts.path);
    } catch {
      // Already gone: nothing to clean.
    }
  }
}
