import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOOPBACK } from './ports.js';
import { TcpClient } from './tcp-client.js';
import { TcpProxy } from './tcp-proxy.js';
import { waitFor } from './wait-for.js';

// An echo server stands in for the target: whatever crosses the proxy comes straight back.
let echo: Server;
let echoPort: number;
const echoSockets = new Set<Socket>();

beforeAll(async () => {
  echo = createServer((socket) => {
    echoSockets.add(socket);
    socket.on('close', () => echoSockets.delete(socket));
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  echoPort = await new Promise<number>((resolve) =>
    echo.listen(0, LOOPBACK, () => resolve((echo.address() as { port: number }).port)),
  );
});

afterAll(async () => {
  for (const socket of echoSockets) socket.destroy();
  await new Promise<void>((resolve) => echo.close(() => resolve()));
});

const soon = (): AbortSignal => AbortSignal.timeout(2_000);

async function roundTripMs(client: TcpClient, text: string): Promise<number> {
  const started = performance.now();
  client.write(`${text}\n`);
  expect(await client.readLine(soon())).toBe(text);
  return performance.now() - started;
}

describe('TcpProxy', () => {
  it('passes bytes through both ways', async () => {
    await using proxy = await TcpProxy.start({ target: { port: echoPort } });
    await using client = await TcpClient.connect(proxy.port);
    await roundTripMs(client, 'hello');
    await roundTripMs(client, 'x'.repeat(200_000));
    expect(proxy.connectionCount).toBe(1);
    expect(proxy.toTarget.bytesForwarded).toBe(proxy.toClient.bytesForwarded);
  });

  it('delays each direction independently, by at least the delay set', async () => {
    await using proxy = await TcpProxy.start({ target: { port: echoPort } });
    await using client = await TcpClient.connect(proxy.port);
    await roundTripMs(client, 'warm-up');
    proxy.toTarget.delay(80);
    expect(await roundTripMs(client, 'one way')).toBeGreaterThanOrEqual(80);
    proxy.toClient.delay(50);
    expect(await roundTripMs(client, 'both ways')).toBeGreaterThanOrEqual(130);
    proxy.heal();
    expect(await roundTripMs(client, 'healed')).toBeLessThan(130);
  });

  it('cut() resets open connections and new ones until heal()', async () => {
    await using proxy = await TcpProxy.start({ target: { port: echoPort } });
    await using open = await TcpClient.connect(proxy.port);
    await roundTripMs(open, 'before');

    proxy.cut();
    const reset = await open.ended(soon());
    expect((reset as NodeJS.ErrnoException).code).toBe('ECONNRESET');
    const refused: unknown = await TcpClient.connect(proxy.port)
      .then(async (client) => {
        await using fresh = client;
        return await fresh.ended(soon());
      })
      .catch((error: unknown) => error);
    expect((refused as NodeJS.ErrnoException).code).toBe('ECONNRESET');
    await waitFor(() => proxy.connectionCount === 0, { what: 'the cut connections to go', deadlineMs: 2_000 });

    proxy.heal();
    await using again = await TcpClient.connect(proxy.port);
    await roundTripMs(again, 'after');
  });

  it('blackhole() keeps the connection open but no byte arrives; heal() restores it', async () => {
    await using proxy = await TcpProxy.start({ target: { port: echoPort } });
    await using client = await TcpClient.connect(proxy.port);
    await roundTripMs(client, 'before');

    proxy.toTarget.blackhole();
    client.write('lost\n');
    await expect(client.readLine(AbortSignal.timeout(300))).rejects.toThrow(/timeout/i);
    expect(client.endedWith).toBeUndefined();
    expect(proxy.toTarget.bytesDropped).toBe('lost\n'.length);

    proxy.heal();
    await roundTripMs(client, 'after');
    expect(client.buffered).toBe(0);
  });

  it('pause() holds bytes back and delivers them on heal()', async () => {
    await using proxy = await TcpProxy.start({ target: { port: echoPort } });
    await using client = await TcpClient.connect(proxy.port);
    proxy.toClient.pause();
    client.write('held\n');
    await expect(client.readLine(AbortSignal.timeout(300))).rejects.toThrow(/timeout/i);
    proxy.heal();
    expect(await client.readLine(soon())).toBe('held');
  });

  it('close() is idempotent and resets what is open', async () => {
    const proxy = await TcpProxy.start({ target: { port: echoPort } });
    await using client = await TcpClient.connect(proxy.port);
    await roundTripMs(client, 'hi');
    await Promise.all([proxy.close(), proxy.close()]);
    expect((await client.ended(soon()) as NodeJS.ErrnoException).code).toBe('ECONNRESET');
    await expect(TcpClient.connect(proxy.port)).rejects.toThrow(/ECONNREFUSED/);
  });
});
