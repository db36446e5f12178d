import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NatsServer } from './nats-server.js';
import { pidAlive } from './process.js';
import { TcpClient } from './tcp-client.js';

describe('NatsServer', () => {
  it('greets a raw TCP client with INFO, with JetStream on', async () => {
    await using server = await NatsServer.start({ jetstream: true });
    await using client = await TcpClient.connect(server.port);
    const line = await client.readLine(AbortSignal.timeout(2_000));
    expect(line).toMatch(/^INFO \{/);
    const info = JSON.parse(line.slice(5)) as { port: number; jetstream?: boolean };
    expect(info.port).toBe(server.port);
    expect(info.jetstream).toBe(true);
    client.write('PING\r\n');
    expect(await client.readLine(AbortSignal.timeout(2_000))).toBe('PONG');
  });

  it('restart() keeps the port and the store dir; close() leaves nothing behind', async () => {
    const server = await NatsServer.start({ jetstream: true });
    const { port, storeDir } = server;
    const before = await server.info();
    const firstPid = server.pid ?? -1;

    await server.restart();
    const after = await server.info();
    expect(server.port).toBe(port);
    expect(after.port).toBe(port);
    expect(after.server_id).not.toBe(before.server_id);
    expect(pidAlive(firstPid)).toBe(false);

    await server.kill();
    await expect(server.info(AbortSignal.timeout(1_000))).rejects.toThrow(/ECONNREFUSED/);
    await server.restart();
    expect((await server.info()).port).toBe(port);

    const pid = server.pid ?? -1;
    await server.close();
    await server.close();
    expect(pidAlive(pid)).toBe(false);
    expect(storeDir !== undefined && existsSync(storeDir)).toBe(false);
  });

  it('sends nothing while paused and INFO once resumed', async () => {
    await using server = await NatsServer.start();
    await server.pause();
    // The kernel still completes the handshake for a stopped process; only the greeting is missing.
    await using client = await TcpClient.connect(server.port);
    await expect(client.readLine(AbortSignal.timeout(300))).rejects.toThrow(/timeout/i);
    await server.resume();
    expect(await client.readLine(AbortSignal.timeout(2_000))).toMatch(/^INFO /);
  });
});
