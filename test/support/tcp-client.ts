import { connect, type Socket } from 'node:net';
import { assertLoopback, LOOPBACK } from './ports.js';

/** Reads one frame from the front of `buffer`: its value and byte length, or undefined if incomplete. */
export type FrameParser<T> = (buffer: Buffer) => { value: T; length: number } | undefined;

export const parseLine: FrameParser<string> = (buffer) => {
  const end = buffer.indexOf('\n');
  if (end < 0) return undefined;
  return { value: buffer.subarray(0, end).toString('utf8').replace(/\r$/, ''), length: end + 1 };
};

interface PendingRead {
  parse: FrameParser<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/**
 * A raw TCP connection for tests and probes: buffers everything received, so successive reads
 * never lose bytes, and every read takes an AbortSignal.
 */
export class TcpClient implements AsyncDisposable {
  readonly socket: Socket;
  #buffer = Buffer.alloc(0);
  #pending: PendingRead | undefined;
  #ended: Error | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#drain();
    });
    const end = (error: Error): void => {
      this.#ended ??= error;
      this.#drain();
    };
    socket.on('error', end);
    socket.on('end', () => end(new Error('connection closed by peer')));
    socket.on('close', () => end(new Error('connection closed')));
  }

  static connect(port: number, options: { host?: string; signal?: AbortSignal } = {}): Promise<TcpClient> {
    const host = options.host ?? LOOPBACK;
    assertLoopback(host);
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host, noDelay: true, ...(options.signal ? { signal: options.signal } : {}) });
      const onError = (error: Error): void => reject(error);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        resolve(new TcpClient(socket));
      });
    });
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this.#buffer.length;
  }

  /** Why the connection ended, once it has (e.g. ECONNRESET). */
  get endedWith(): Error | undefined {
    return this.#ended;
  }

  write(data: string | Uint8Array): void {
    this.socket.write(data);
  }

  /** The next frame `parse` recognises; rejects when the signal aborts or the connection ends first. */
  read<T>(parse: FrameParser<T>, signal?: AbortSignal): Promise<T> {
    if (this.#pending !== undefined) return Promise.reject(new Error('a read is already pending'));
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => {
        this.#pending = undefined;
        reject(signal?.reason as Error);
      };
      if (signal?.aborted === true) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => signal?.removeEventListener('abort', onAbort);
      this.#pending = {
        parse,
        resolve: (value) => (done(), resolve(value as T)),
        reject: (error) => (done(), reject(error)),
      };
      this.#drain();
    });
  }

  readLine(signal?: AbortSignal): Promise<string> {
    return this.read(parseLine, signal);
  }

  /** Resolves when the connection has ended, with the error that ended it. */
  async ended(signal?: AbortSignal): Promise<Error> {
    return this.read(() => undefined, signal).then(
      () => new Error('unreachable'),
      (error: unknown) => {
        if (signal?.aborted === true) throw error;
        return error as Error;
      },
    );
  }

  close(): void {
    this.socket.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #drain(): void {
    const pending = this.#pending;
    if (pending === undefined) return;
    let frame: { value: unknown; length: number } | undefined;
    try {
      frame = pending.parse(this.#buffer);
    } catch (error) {
      this.#pending = undefined;
      pending.reject(error as Error);
      return;
    }
    if (frame !== undefined) {
      this.#buffer = this.#buffer.subarray(frame.length);
      this.#pending = undefined;
      pending.resolve(frame.value);
    } else if (this.#ended !== undefined) {
      this.#pending = undefined;
      pending.reject(this.#ended);
    }
  }
}
