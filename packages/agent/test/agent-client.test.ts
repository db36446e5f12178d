import { getEventListeners } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/client/agent-client.js';

let dir = '';
let server: Server | undefined;
const accepted: Socket[] = [];
afterEach(async () => {
  // A connection kept half-open on purpose would hold close() for ever.
  for (const s of accepted.splice(0)) s.destroy();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe('AgentClient.connect', () => {
  it('leaves nothing on the caller’s signal, however often it fails to connect (a wait for an agent to come up retries with one signal)', async () => {
    dir = mkdtempSync(join(tmpdir(), 'baton-client-'));
    const socketPath = join(dir, 'absent.sock');
    const deadline = new AbortController();
    for (let i = 0; i < 20; i++) {
      await expect(AgentClient.connect({ socketPath, signal: deadline.signal })).rejects.toMatchObject({ code: 'UNAVAILABLE', details: { socket: socketPath } });
    }
    expect(getEventListeners(deadline.signal, 'abort')).toHaveLength(0);
  });

  it('does not connect once its signal has aborted', async () => {
    dir = mkdtempSync(join(tmpdir(), 'baton-client-'));
    const socketPath = join(dir, 'agent.sock');
    const connections: number[] = [];
    const connected = Promise.withResolvers<void>();
    server = createServer((s) => {
      connections.push(1);
      s.destroy();
      connected.resolve();
    });
    await new Promise<void>((resolve) => server!.listen(socketPath, resolve));
    const deadline = new AbortController();
    deadline.abort();
    await expect(AgentClient.connect({ socketPath, signal: deadline.signal })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(AgentClient.connect({ socketPath })).resolves.toBeInstanceOf(AgentClient);
    await connected.promise;
    expect(connections).toHaveLength(1);
  });

  it('leaves nothing on the signal of answered requests (one deadline spans a whole step), and refuses one that has aborted', async () => {
    dir = mkdtempSync(join(tmpdir(), 'baton-client-'));
    const socketPath = join(dir, 'agent.sock');
    // Answers every line with a successful reply carrying its id, as the agent does.
    server = createServer((s) => {
      s.setEncoding('utf8').on('data', (text: string) => {
        for (const line of text.split('\n').filter(Boolean)) {
          const { id } = JSON.parse(line) as { id: number };
          s.write(JSON.stringify({ v: 1, id, ok: true, result: { protocol: 1, host: 'h', pid: 1, version: '0', generation: 0, httpPort: null, ofdLocks: true } }) + '\n');
        }
      });
    });
    await new Promise<void>((resolve) => server!.listen(socketPath, resolve));
    await using client = await AgentClient.connect({ socketPath });
    const step = new AbortController();
    for (let i = 0; i < 20; i++) await client.request('hello', undefined, { signal: step.signal });
    expect(getEventListeners(step.signal, 'abort')).toHaveLength(0);
    step.abort();
    await expect(client.request('hello', undefined, { signal: step.signal })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  it('closes within its grace when the agent never closes its side (a stopped agent)', async () => {
    dir = mkdtempSync(join(tmpdir(), 'baton-client-'));
    const socketPath = join(dir, 'agent.sock');
    // Keeps its side open after the client's FIN, as a stopped or hung process would.
    server = createServer({ allowHalfOpen: true }, (s) => accepted.push(s.resume()));
    await new Promise<void>((resolve) => server!.listen(socketPath, resolve));
    const client = await AgentClient.connect({ socketPath });
    const started = performance.now();
    await client.close();
    expect(performance.now() - started).toBeLessThan(5_000);
  });
});

