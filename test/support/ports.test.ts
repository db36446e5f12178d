import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { assertLoopback, freePort, freePorts, LOOPBACK } from './ports.js';

function bind(port: number): Promise<void> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, LOOPBACK, () => server.close(() => resolve()));
  });
}

describe('ports', () => {
  it('hands out distinct ports that can be bound', async () => {
    const ports = await freePorts(16);
    expect(new Set(ports).size).toBe(16);
    await Promise.all(ports.map(bind));
  });

  it('does not hand the same port out twice in a row', async () => {
    const first = await freePort();
    const next = await freePorts(8);
    expect(next).not.toContain(first);
  });

  it('refuses any non-loopback address', () => {
    expect(() => assertLoopback('10.0.0.1')).toThrow(/only talks to loopback/);
    expect(() => assertLoopback('example.com')).toThrow(/only talks to loopback/);
    expect(() => assertLoopback('127.0.0.12')).not.toThrow();
    expect(() => assertLoopback('[::1]')).not.toThrow();
  });
});
