import { connect, type Socket } from 'node:net';
import {
  AGENT_METHODS,
  BatonError,
  PROTOCOL_VERSION,
  ReplyEnvelope,
  type AgentMethod,
  type AgentParams,
  type AgentResult,
  type ErrorBody,
} from '@baton/core';
import { LineReader } from '../api/line-reader.js';
import { parseGrantsResult, parseOkReply } from './hot-reply.js';

export const MAX_REPLY_BYTES = 256 * 1024 * 1024;
/** How long close() waits for the agent to close its side before cutting the connection. */
const CLOSE_GRACE_MS = 1_000;

export interface AgentClientOptions {
  socketPath: string;
  signal?: AbortSignal;
}

interface Pending {
  method: AgentMethod;
  resolve(value: unknown): void;
  reject(err: BatonError): void;
}

/**
 * A client of the agent's socket: one connection, requests answered in order. A registered
 * connection-bound owner lives exactly as long as this client stays open.
 */
export class AgentClient implements AsyncDisposable {
  private readonly pending = new Map<number, Pending>();
  /** Replies can be far larger than requests: `locks` on a host with 10,000 locks is about 3 MB. */
  private readonly reader = new LineReader(MAX_REPLY_BYTES);
  private nextId = 1;
  private readonly done = Promise.withResolvers<void>();
  /** Resolves when the connection has closed, from either side. */
  readonly closed: Promise<void> = this.done.promise;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const ev of this.reader.push(chunk)) {
        if (ev.kind === 'line') this.onLine(ev.line);
        else this.takeWaiter(undefined)?.reject(new BatonError('LINE_TOO_LONG', `a reply exceeded ${MAX_REPLY_BYTES} bytes; it was discarded`, { details: { limit: MAX_REPLY_BYTES } }));
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      for (const p of this.pending.values()) p.reject(new BatonError('UNAVAILABLE', `connection to the agent closed before "${p.method}" was answered`));
      this.pending.clear();
      this.done.resolve();
    });
  }

  static async connect(opts: AgentClientOptions): Promise<AgentClient> {
    const unreachable = (err: Error): BatonError =>
      new BatonError('UNAVAILABLE', `cannot reach the agent at ${opts.socketPath}: ${err.message}`, { cause: err, details: { socket: opts.socketPath } });
    if (opts.signal?.aborted) throw unreachable(new Error('aborted'));
    const socket = connect(opts.socketPath);
    await new Promise<void>((resolve, reject) => {
      // Either way the other listeners go: a caller retrying with one signal until the agent is
      // up would otherwise leave a listener on it per attempt.
      const settle = (): void => {
        socket.off('error', fail);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const fail = (err: Error): void => {
        settle();
        socket.destroy();
        reject(unreachable(err));
      };
      const onAbort = (): void => fail(new Error('aborted'));
      socket.once('connect', () => {
        settle();
        resolve();
      });
      socket.once('error', fail);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
    return new AgentClient(socket);
  }

  /**
   * The request a reply answers: the one with its id, or, for a reply with no id (the agent
   * refused the connection, or a line it could not read), the oldest one waiting.
   */
  private takeWaiter(id: number | undefined): Pending | undefined {
    const key = id ?? this.pending.keys().next().value;
    const waiter = key === undefined ? undefined : this.pending.get(key);
    if (waiter) this.pending.delete(key!);
    return waiter;
  }

  private onLine(line: string): void {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      // Not a reply: an agent that is not speaking this protocol. Nothing to resolve with it.
      return;
    }
    // A reply that succeeded (every grant's) skips the envelope's zod; request() still checks its result.
    const ok = parseOkReply(raw);
    if (ok) {
      this.takeWaiter(typeof ok.id === 'number' ? ok.id : undefined)?.resolve(ok.result);
      return;
    }
    const parsed = ReplyEnvelope.safeParse(raw);
    if (!parsed.success) return;
    const reply = parsed.data;
    const waiter = this.takeWaiter(typeof reply.id === 'number' ? reply.id : undefined);
    if (!waiter) return;
    if (reply.ok) waiter.resolve(reply.result);
    else waiter.reject(BatonError.fromBody(reply.error as ErrorBody));
  }

  /** Send one request; resolves with its validated result or rejects with the agent's error. */
  async request<M extends AgentMethod>(method: M, params?: AgentParams<M>, opts: { signal?: AbortSignal } = {}): Promise<AgentResult<M>> {
    const id = this.nextId++;
    const signal = opts.signal;
    if (signal?.aborted) throw new BatonError('UNAVAILABLE', `"${method}" aborted`);
    const result = new Promise<unknown>((resolve, reject) => {
      const onAbort = (): void => {
        if (this.pending.delete(id)) reject(new BatonError('UNAVAILABLE', `"${method}" aborted`));
      };
      // Removed once answered: one signal often spans many requests (a deadline for a whole step).
      const settled = (): void => signal?.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        method,
        resolve: (v) => (settled(), resolve(v)),
        reject: (e) => (settled(), reject(e)),
      });
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    this.socket.write(JSON.stringify({ v: PROTOCOL_VERSION, id, method, params: params ?? {} }) + '\n');
    const raw = await result;
    return (parseGrantsResult(method, raw) ?? AGENT_METHODS[method].result.parse(raw)) as AgentResult<M>;
  }

  /** Write a raw line (tests of the protocol's error handling use this). */
  writeRaw(data: string | Buffer): void {
    this.socket.write(data);
  }

  /**
   * Ends the connection and resolves once it has closed; an agent that does not close its side
   * within CLOSE_GRACE_MS (stopped, or gone without a FIN) is cut off rather than waited for.
   */
  async close(): Promise<void> {
    this.socket.end();
    const grace = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
    await this.closed;
    clearTimeout(grace);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
