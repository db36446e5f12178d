import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { pidAlive } from './process.js';
import { RedisServer } from './redis-server.js';
import { encodeCommand, parseReply, RespError } from './resp.js';
import { TcpClient } from './tcp-client.js';

describe('RedisServer', () => {
  it('answers PING, SET and GET over raw RESP', async () => {
    await using server = await RedisServer.start();
    await using client = await TcpClient.connect(server.port);
    const send = async (...args: string[]): Promise<unknown> => {
      client.write(encodeCommand(...args));
      return client.read(parseReply, AbortSignal.timeout(2_000));
    };
    expect(await send('PING')).toBe('PONG');
    expect(await send('SET', 'baton:test', 'héllo wörld')).toBe('OK');
    expect(await send('GET', 'baton:test')).toBe('héllo wörld');
    expect(await send('GET', 'baton:missing')).toBeNull();
    expect(await send('SET', 'baton:lock', 'a', 'NX', 'PX', '5000')).toBe('OK');
    expect(await send('SET', 'baton:lock', 'b', 'NX', 'PX', '5000')).toBeNull();
    expect(await send('CONFIG', 'GET', 'save')).toEqual(['save', '']);
    expect(await send('NO-SUCH-COMMAND')).toBeInstanceOf(RespError);
  });

  it('restart() keeps the port and starts empty; close() leaves nothing behind', async () => {
    const server = await RedisServer.start();
    const { port, dir } = server;
    expect(await server.command('SET', 'k', 'v')).toBe('OK');
    const firstPid = server.pid ?? -1;
    await server.restart();
    expect(server.port).toBe(port);
    expect(pidAlive(firstPid)).toBe(false);
    expect(await server.command('GET', 'k')).toBeNull();

    const pid = server.pid ?? -1;
    await server.close();
    await server.close();
    expect(pidAlive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });
});
