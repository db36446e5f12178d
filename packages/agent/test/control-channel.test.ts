import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Server, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BatonError } from '@baton/core';
import { ControlChannel, isDropped, serveControl } from '../src/hypervisor/sim/control.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

function socketPath(): string {
  const dir = mkdtempSync(join(tmpdir(), 'baton-control-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'control.sock');
}

/** A VM's control server: `slow` answers when released, `fail` is refused, anything else echoes. */
async function vm(path: string): Promise<{ server: Server; release(): void; connections(): number; drop(): void }> {
  let release = (): void => undefined;
  let accepted = 0;
  const sockets: Socket[] = [];
  const server = await serveControl(path, async (req) => {
    if (req.op === 'slow') await new Promise<void>((resolve) => (release = resolve));
    if (req.op === 'fail') throw new BatonError('INVALID_REQUEST', 'refused by the VM');
    return { op: req.op };
  });
  server.on('connection', (socket: Socket) => (accepted++, sockets.push(socket)));
  cleanups.push(() => server.close());
  // What a VM that exits does to the driver's connection.
  const drop = (): void => sockets.splice(0).forEach((s) => s.destroy());
  return { server, release: () => release(), connections: () => accepted, drop };
}

describe('the sim VM control channel', () => {
  it('answers requests on one connection by id, a quick one while a slow one is still running', async () => {
    const path = socketPath();
    const v = await vm(path);
    using channel = new ControlChannel(path);
    const slow = channel.request({ op: 'slow' }, 5_000);
    expect(await channel.request({ op: 'status' }, 5_000)).toEqual({ op: 'status' });
    v.release();
    expect(await slow).toEqual({ op: 'slow' });
    await expect(channel.request({ op: 'fail' }, 5_000)).rejects.toMatchObject({ code: 'INVALID_REQUEST', message: 'refused by the VM' });
    expect(await channel.request({ op: 'status' }, 5_000)).toEqual({ op: 'status' });
    expect(v.connections()).toBe(1);
  });

  it('fails with the errno when nobody serves the socket, and reconnects to the VM that serves it next', async () => {
    const path = socketPath();
    using channel = new ControlChannel(path);
    const absent = await channel.request({ op: 'status' }, 5_000).catch((e: unknown) => e as BatonError);
    expect(absent).toMatchObject({ code: 'UNAVAILABLE' });
    expect((absent as BatonError).cause).toMatchObject({ code: 'ENOENT' });
    expect(isDropped(absent)).toBe(false);
    const v = await vm(path);
    expect(await channel.request({ op: 'status' }, 5_000)).toEqual({ op: 'status' });
    expect(v.connections()).toBe(1);
  });

  it('fails the requests pending when the VM drops the connection, and opens a new one for the next', async () => {
    const path = socketPath();
    const v = await vm(path);
    using channel = new ControlChannel(path);
    expect(await channel.request({ op: 'status' }, 5_000)).toEqual({ op: 'status' });
    const pending = channel.request({ op: 'slow' }, 5_000);
    v.drop();
    const dropped = await pending.catch((e: unknown) => e);
    expect(dropped).toMatchObject({ code: 'UNAVAILABLE' });
    expect(isDropped(dropped)).toBe(true);
    expect(await channel.request({ op: 'status' }, 5_000)).toEqual({ op: 'status' });
    expect(v.connections()).toBe(2);
  });

  it('answers UNAVAILABLE for a request the VM never answers, and for those pending when the channel closes', async () => {
    const path = socketPath();
    await vm(path);
    const channel = new ControlChannel(path);
    await expect(channel.request({ op: 'slow' }, 50)).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining('did not answer slow in 50 ms') });
    const pending = channel.request({ op: 'slow' }, 5_000);
    channel.close();
    channel.close();
    await expect(pending).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(channel.request({ op: 'status' }, 5_000)).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining('closed') });
  });
});
