import type { Socket } from 'node:net';
import { BatonError, type ReplyEnvelope } from '@baton/core';
import type { PeerCred } from '../sys/index.js';
import { dispatch, errorReply, type ConnectionContext, type Handlers } from './dispatch.js';
import { LineReader } from './line-reader.js';

/** The descriptor behind a Node socket or server (libuv keeps it on the handle). */
export function handleFd(obj: Socket | { _handle?: unknown }): number {
  const fd = (obj as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no file descriptor');
  return fd;
}

export interface ConnectionOptions {
  id: number;
  peer: PeerCred | undefined;
  maxLineBytes: number;
  handlers: Handlers;
  onClose(conn: ClientConnection): void;
  /** What a previous image received on this connection but had not handled (re-exec). */
  carried?: CarriedInput;
  ownerUuid?: string;
  restricted?: boolean;
}

/** A request line, or an oversized line to answer with LINE_TOO_LONG, in the order received. */
export type Received = { kind: 'line'; line: string } | { kind: 'too-long' };

/**
 * A connection's input not yet handled, as a re-exec carries it: the requests split but not
 * answered, then the bytes after them (a partial line and what sat unread in the socket), and
 * whether those bytes are the rest of an oversized line already answered.
 */
export interface CarriedInput {
  queued: Received[];
  pending: Buffer;
  discarding: boolean;
}

/**
 * One client on the agent socket: lines in, replies out, in order. A request that waits on the
 * cluster holds back the requests behind it on the same connection, so a client's requests take
 * effect in the order it sent them.
 */
export class ClientConnection implements ConnectionContext {
  readonly id: number;
  readonly peer: PeerCred | undefined;
  ownerUuid: string | undefined;
  restricted: boolean;
  private readonly reader: LineReader;
  private closed = false;
  private paused = false;
  private readonly queue: Received[] = [];
  private inFlight: Promise<void> | undefined;

  constructor(
    readonly socket: Socket,
    private readonly opts: ConnectionOptions,
  ) {
    this.id = opts.id;
    this.peer = opts.peer;
    this.ownerUuid = opts.ownerUuid;
    this.restricted = opts.restricted ?? false;
    this.reader = new LineReader(opts.maxLineBytes, { discarding: opts.carried?.discarding ?? false });
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.closed = true;
      opts.onClose(this);
    });
    if (opts.carried) {
      this.queue.push(...opts.carried.queued);
      this.receive(opts.carried.pending);
    }
  }

  private receive(chunk: Buffer): void {
    for (const event of this.reader.push(chunk)) this.queue.push(event.kind === 'line' ? { kind: 'line', line: event.line } : { kind: 'too-long' });
    this.drain();
  }

  private drain(): void {
    while (!this.paused && this.inFlight === undefined && this.queue.length > 0) {
      const event = this.queue.shift()!;
      const reply =
        event.kind === 'line'
          ? dispatch(this.opts.handlers, this, event.line)
          : errorReply(null, new BatonError('LINE_TOO_LONG', `request line exceeds ${this.opts.maxLineBytes} bytes; discarded`, { details: { limit: this.opts.maxLineBytes } }));
      if (reply instanceof Promise) {
        this.inFlight = reply.then((r) => {
          this.send(r);
          this.inFlight = undefined;
          this.drain();
        });
      } else {
        this.send(reply);
      }
    }
  }

  send(reply: ReplyEnvelope): void {
    if (!this.closed) this.socket.write(JSON.stringify(reply) + '\n');
  }

  /** Refuse the connection with an error the client can read, then close it. */
  refuse(err: BatonError): void {
    this.socket.end(JSON.stringify(errorReply(null, err)) + '\n');
  }

  get isClosed(): boolean {
    return this.closed;
  }

  fd(): number {
    return handleFd(this.socket);
  }

  /** Stop handling requests; whatever arrives stays unread for the next image. */
  pause(): void {
    this.paused = true;
    this.socket.pause();
  }

  resume(): void {
    this.paused = false;
    this.socket.resume();
    this.drain();
  }

  /**
   * Everything received and not yet handled, in order (CarriedInput). The unread part is put
   * back, so nothing changes if the exec fails.
   */
  carry(): CarriedInput {
    const unread: Buffer[] = [];
    for (let c = this.socket.read() as Buffer | null; c !== null; c = this.socket.read() as Buffer | null) unread.push(c);
    const rest = Buffer.concat(unread);
    if (rest.length > 0) this.socket.unshift(rest);
    return { queued: [...this.queue], pending: Buffer.concat([this.reader.pending(), rest]), discarding: this.reader.isDiscarding };
  }

  /** Resolves when every reply written so far has reached the kernel. */
  async flushed(signal: AbortSignal): Promise<void> {
    await this.inFlight;
    while (!this.closed && this.socket.writableLength > 0) {
      signal.throwIfAborted();
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.off('drain', done);
          this.socket.off('close', done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        this.socket.once('drain', done);
        this.socket.once('close', done);
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }
}
