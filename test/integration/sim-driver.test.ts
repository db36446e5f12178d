import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SimDriver } from '@baton/agent';
import type { VmInfo } from '@baton/core';
import { checkDisk, makeTempDir, pidAlive, removeDir, SharedStorage, waitFor } from '../support/index.js';

/** The sim hypervisor driver: VMs as real processes, live migration between two hosts' drivers. */
function events(driverDir: string, uuid: string): Record<string, unknown>[] {
  return readFileSync(join(driverDir, 'vms', uuid, 'events.log'), 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('sim driver', () => {
  it('migrates a running VM: paused at switchover, its progress carried, a failed send leaves the source running', async () => {
    await using storage = await SharedStorage.create();
    const dirA = await makeTempDir('driver-a');
    const dirB = await makeTempDir('driver-b');
    using a = new SimDriver(dirA, 'host-a', 10);
    using b = new SimDriver(dirB, 'host-b', 10);
    const uuid = randomUUID();
    const disk = storage.image('mig.img');
    const spec = { uuid, name: 'mig', disks: [{ path: disk, mode: 'exclusive' as const }], onLeaseLoss: { policy: 'kill' as const } };
    const grant = (token: number) => ({ lockspace: 'images', resource: disk, mode: 'exclusive' as const, token, lockPath: disk, since: 'now' });
    try {
      await a.create(spec);
      await a.resume(uuid, [grant(5)], null);
      await waitFor(async () => ((await a.find(uuid))!.seq >= 5 ? true : false), { what: 'writes on host-a', deadlineMs: 5_000, intervalMs: 10 });

      const { incoming } = await b.createIncoming(spec);
      expect((await b.createIncoming(spec)).incoming).toBe(incoming); // idempotent
      await expect(a.send(uuid, incoming, { fail: true })).rejects.toMatchObject({ code: 'IO_ERROR' });
      expect((await a.find(uuid))!.state).toBe('running');

      const sent: VmInfo = await a.send(uuid, incoming, { delayMs: 20 });
      expect(sent.state).toBe('paused');
      const received = await waitFor(async () => ((await b.find(uuid))!.state === 'paused' ? (await b.find(uuid))! : false), { what: 'state received', deadlineMs: 5_000, intervalMs: 10 });
      expect(received.seq).toBe(sent.seq);
      await b.resume(uuid, [grant(7)], null);
      await waitFor(async () => ((await b.find(uuid))!.seq > sent.seq + 3 ? true : false), { what: 'writes on host-b', deadlineMs: 5_000, intervalMs: 10 });

      // The old copy unpaused with its stale token is refused by the disk's FenceGuard.
      await a.resume(uuid, [grant(5)], null);
      await waitFor(() => events(dirA, uuid).some((e) => e.event === 'write-refused' && e.code === 'STALE_TOKEN'), { what: 'a stale write refused', deadlineMs: 5_000, intervalMs: 10 });
      const epochs = checkDisk(disk);
      expect(epochs.map((e) => [e.host, e.token])).toEqual([
        ['host-a', 5],
        ['host-b', 7],
      ]);
      expect(epochs[1]!.writes).toBeGreaterThan(0);
      await a.destroy(uuid);
      expect(await a.list()).toEqual([]);
      expect((await b.list()).map((v) => v.uuid)).toEqual([uuid]);
    } finally {
      await a.destroy(uuid);
      await b.destroy(uuid);
      await removeDir(dirA);
      await removeDir(dirB);
    }
  });

  it('destroys a VM whether or not it answers: gone when destroy returns; a stopped one killed by pid, not left running without its directory', async () => {
    await using storage = await SharedStorage.create();
    const dir = await makeTempDir('driver-destroy');
    using driver = new SimDriver(dir, 'host-a', 10);
    const uuid = randomUUID();
    try {
      const vm = await driver.create({ uuid, name: 'hung', disks: [{ path: storage.image('hung.img'), mode: 'exclusive' }], onLeaseLoss: { policy: 'kill' } });
      process.kill(vm.pid, 'SIGSTOP');
      await driver.destroy(uuid);
      expect(pidAlive(vm.pid)).toBe(false);
      expect(await driver.list()).toEqual([]);
      // One that answers is gone when destroy returns too, as with libvirt's destroy.
      const next = await driver.create({ uuid, name: 'answers', disks: [{ path: storage.image('hung.img'), mode: 'exclusive' }], onLeaseLoss: { policy: 'kill' } });
      await driver.destroy(uuid);
      expect(pidAlive(next.pid)).toBe(false);
    } finally {
      await driver.destroy(uuid);
      await removeDir(dir);
    }
  });
});
