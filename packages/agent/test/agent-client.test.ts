import { getEventListeners } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/client/agent-client.js';

let dir = '';
let server: Server | undefined;
afterEach(async () => {
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

  it('does not connect once its signal has aborted, and leaves no listener after a connection either', async () => {
    dir = mkdtempSync(join(tmpdir(), 'baton-client-'));
    const socketPath = join(dir, 'agent.sock');
    const accepted: number[] = [];
    server = createServer((s) => (accepted.push(1), s.destroy()));
    await new Promise<void>((resolve) => server!.listen(socketPath, resolve));
    const deadline = new AbortController();
    const client = await AgentClient.connect({ socketPath, signal: deadline.signal });
    await client.close();
    expect(getEventListeners(deadline.signal, 'abort')).toHaveLength(0);
    deadline.abort();
    await expect(AgentClient.connect({ socketPath, signal: deadline.signal })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(accepted).toHaveLength(1);
  });
});
