import { createServer, connect, type Server } from 'node:net';
import { rmSync } from 'node:fs';
import { asBatonError, BatonError, toErrorBody, type ErrorBody } from '@baton/core';
import { LineReader } from '../../api/line-reader.js';

/**
 * The sim VM's control channel (what QMP is to QEMU): a UNIX socket the VM serves, one JSON request
 * per connection, one reply. A socket rather than a pipe to the agent: it outlives the agent's
 * re-exec and crash, as a real VM outlives its management daemon.
 */
const MAX_LINE = 1024 * 1024;

export function serveControl(path: string, handle: (req: Record<string, unknown>) => Promise<unknown>): Promise<Server> {
  rmSync(path, { force: true });
  const server = createServer((socket) => {
    const reader = new LineReader(MAX_LINE);
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind !== 'line') return socket.destroy();
        Promise.resolve()
          .then(() => handle(JSON.parse(ev.line) as Record<string, unknown>))
          .then(
            (result) => socket.end(JSON.stringify({ ok: true, result }) + '\n'),
            (err: unknown) => socket.end(JSON.stringify({ ok: false, error: toErrorBody(asBatonError(err)) }) + '\n'),
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

export function controlRequest(path: string, req: Record<string, unknown>, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const reader = new LineReader(MAX_LINE);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new BatonError('UNAVAILABLE', `VM control ${path} did not answer ${String(req.op)} in ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(new BatonError('UNAVAILABLE', `VM control ${path}: ${err.message}`, { cause: err }));
    });
    socket.on('data', (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if (ev.kind !== 'line') continue;
        clearTimeout(timer);
        socket.destroy();
        const reply = JSON.parse(ev.line) as { ok: boolean; result?: unknown; error?: ErrorBody };
        if (reply.ok) resolve(reply.result);
        else reject(BatonError.fromBody(reply.error!));
      }
    });
    socket.write(JSON.stringify(req) + '\n');
  });
}
