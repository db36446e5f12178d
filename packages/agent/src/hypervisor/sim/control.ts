import { createServer, connect, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { asBatonError, BatonError, toErrorBody, type ErrorBody } from '@baton/core';
import { LineReader } from '../../api/line-reader.js';

/**
 * The sim VM's control channel (what QMP is to QEMU): a UNIX socket the VM serves, JSON lines
 * both ways, each reply carrying its request's `id`. A socket rather than a pipe to the agent: it
 * outlives the agent's re-exec and crash, as a real VM outlives its management daemon. The agent
 * keeps one connection per VM open, as libvirt keeps its QMP monitor: a migration's unpause then
 * costs one message, not a connect, an accept and a message (~0.5 ms of the paused window here).
 */
const MAX_LINE = 1024 * 1024;

type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: ErrorBody };

/**
 * Requests on one connection run concurrently (a `send` lasts as long as the migration stream; a
 * `status` meanwhile does not wait for it), so replies come back in completion order, by id.
 */
export function serveControl(path: string, handle: (req: Record<string, unknown>) => Promise<unknown>): Promise<Server> {
  rmSync(path, { force: true });
  const server = createServer((socket) => {
    const reader = new LineReader(MAX_LINE);
    const reply = (r: Reply): void => void (socket.writable && socket.write(JSON.stringify(r) + '\n'));
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind !== 'line') return socket.destroy();
        let id: number;
        let req: Record<string, unknown>;
        try {
          ({ id, ...req } = JSON.parse(ev.line) as { id: number } & Record<string, unknown>);
        } catch {
          // Not the driver's protocol: nothing on this connection can be answered by id.
          return socket.destroy();
        }
        Promise.resolve()
          .then(() => handle(req))
          .then(
            (result) => reply({ id, ok: true, result }),
            (err: unknown) => reply({ id, ok: false, error: toErrorBody(asBatonError(err)) }),
          )
          .catch(() => socket.destroy());
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}

interface Pending {
  resolve(result: unknown): void;
  reject(err: BatonError): void;
  timer: NodeJS.Timeout;
}

/** The connection went away after it was up: the VM may have exited, or only that connection. */
export function isDropped(err: unknown): boolean {
  return err instanceof BatonError && err.code === 'UNAVAILABLE' && err.details?.['dropped'] === true;
}

/**
 * The driver's side: one connection to one VM's control socket, opened on the first request and
 * again after it closed (the VM exited or was replaced, the agent re-executed). A connect that
 * fails keeps its errno as the error's cause: ENOENT or ECONNREFUSED is how the driver knows a VM
 * is not there at all. The socket is unref'd: an open channel never keeps a process alive.
 */
export class ControlChannel implements Disposable {
  private socket: Socket | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  constructor(readonly path: string) {}

  request(req: Record<string, unknown>, timeoutMs: number): Promise<unknown> {
    if (this.closed) return Promise.reject(new BatonError('UNAVAILABLE', `VM control ${this.path}: the channel is closed`));
    const socket = this.socket ?? this.open();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // The VM may be stopped or busy: its late answer is dropped, the connection stays.
        this.pending.delete(id);
        reject(new BatonError('UNAVAILABLE', `VM control ${this.path} did not answer ${String(req.op)} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      socket.write(JSON.stringify({ ...req, id }) + '\n');
    });
  }

  private open(): Socket {
    const socket = connect(this.path);
    socket.unref();
    const reader = new LineReader(MAX_LINE);
    let failure: Error | undefined;
    let connected = false;
    socket.once('connect', () => (connected = true));
    socket.on('error', (err) => (failure = err));
    socket.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind !== 'line') continue;
        const reply = JSON.parse(ev.line) as Reply;
        const waiter = this.pending.get(reply.id);
        if (waiter === undefined) continue;
        this.pending.delete(reply.id);
        clearTimeout(waiter.timer);
        if (reply.ok) waiter.resolve(reply.result);
        else waiter.reject(BatonError.fromBody(reply.error));
      }
    });
    socket.on('close', () => {
      if (this.socket === socket) this.socket = undefined;
      const err = connected
        ? new BatonError('UNAVAILABLE', `VM control ${this.path}: the connection dropped before the answer${failure ? ` (${failure.message})` : ''}`, { details: { dropped: true } })
        : new BatonError('UNAVAILABLE', `VM control ${this.path}: ${failure?.message ?? 'the connection closed'}`, { cause: failure });
      for (const [id, waiter] of this.pending) {
        this.pending.delete(id);
        clearTimeout(waiter.timer);
        waiter.reject(err);
      }
    });
    this.socket = socket;
    return socket;
  }

  /** Idempotent; requests still waiting are answered UNAVAILABLE. */
  close(): void {
    this.closed = true;
    this.socket?.destroy();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
