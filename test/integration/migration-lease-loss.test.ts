import { describe, expect, it } from 'vitest';
import type { ClusterLease } from '@baton/core';
import { migrationFile, pidAlive, processState, waitFor, writtenUnder } from '../support/index.js';

/**
 * A VM's lease-loss policy, set by a definition after its leases were granted, holds where the
 * VM goes: across a migration (the destination runs it under the policy the source ran it under,
 * and the moved leases name it) and across a crash of its agent (the restarted agent re-adopts it
 * with that policy, not the one its leases were granted with). Shown by what the policy is for:
 * etcd goes away past the hosts' TTL, and the VM is paused by its host, not killed; when etcd is
 * back it gets its leases again with new tokens and runs on. Real etcd, NATS, agent processes and
 * sim VMs.
 */
// A crashed agent re-adopts its session only while etcd still has it: one TTL after the last
// keepalive (sent up to TTL/3 before the crash), the restart must have reached etcd. 3 s (the
// cluster's default here) left 2–3 s for a Node start, which a loaded CI machine overran once.
const file = migrationFile({ ttlSeconds: 6 });
const { servers } = file;

/**
 * etcd away past the TTL, then back: the VM is paused by its host's fence through its hypervisor
 * (the sim's pause, as libvirt suspends a domain; not SIGSTOP), then re-granted a lease newer than
 * `token` and unpaused.
 */
async function pausedThroughOutage(host: string, uuid: string, pid: number, token: number): Promise<ClusterLease> {
  const state = async (): Promise<string | undefined> => (await file.mc.driver(host).find(uuid))?.state;
  await servers.etcd.kill('SIGKILL');
  await waitFor(async () => (await state()) === 'paused', { what: `the VM (pid ${pid}) paused by its host's fence`, deadlineMs: 15_000, intervalMs: 20 });
  expect([pidAlive(pid), processState(pid)]).toEqual([true, expect.not.stringMatching(/^T$/)]);
  await servers.etcd.start();
  return waitFor(
    async () => {
      const l = (await file.mc.leases(uuid).catch(() => []))[0];
      return l !== undefined && l.token > token && (await state()) === 'running' ? l : false;
    },
    { what: 'the VM re-granted its lease and resumed', deadlineMs: 30_000, intervalMs: 50 },
  );
}

describe('a redefined VM', () => {
  it('migrated keeps the lease-loss policy it ran under: paused, not killed, by its new host when etcd is lost, and resumed with new tokens after', async () => {
    const vm = await file.mc.startVm('host-a', 'policy-vm', ['policy-vm-root.img']);
    const root = file.mc.disk('policy-vm-root.img');
    // Granted under the default (kill); the definition changes the policy only in the agent's hands.
    const defined = await file.mc.define('policy-vm', { disks: [{ path: root }], onLeaseLoss: { policy: 'pause' } });
    expect(defined.status, JSON.stringify(defined.body)).toBe(200);

    const done = await file.mc.migrate('policy-vm', 'host-b');
    expect(done.phase).toBe('done');
    expect(done.onLeaseLoss).toEqual({ policy: 'pause' });
    const [lease] = await file.mc.leases(vm.uuid);
    expect(lease).toMatchObject({ host: 'host-b', token: done.tokens.commit, owner: { uuid: vm.uuid, onLeaseLoss: { policy: 'pause' } } });
    const pid = (await file.mc.vms()).find((v) => v.uuid === vm.uuid && v.host === 'host-b')!.pid;
    await writtenUnder(root, done.tokens.commit!, 3);

    // etcd gone (its data kept) past the TTL: every host fences on its own clock.
    const regranted = await pausedThroughOutage('host-b', vm.uuid, pid, done.tokens.commit!);
    expect(regranted).toMatchObject({ host: 'host-b', owner: { onLeaseLoss: { policy: 'pause' } } });
    // One writer per token; the destination's tokens only grew.
    const epochs = (await writtenUnder(root, regranted.token, 3)).map((e) => [e.host, e.token]);
    expect(epochs).toEqual([
      ['host-a', vm.locks[0]!.token],
      ['host-b', done.tokens.commit],
      ['host-b', regranted.token],
    ]);
  });

  it('keeps its policy when its agent crashes and restarts: re-adopted under it, paused (not killed) when etcd is lost', async () => {
    const vm = await file.mc.startVm('host-a', 'crash-vm', ['crash-vm-root.img']);
    const root = file.mc.disk('crash-vm-root.img');
    expect((await file.mc.define('crash-vm', { disks: [{ path: root }], onLeaseLoss: { policy: 'pause' } })).status).toBe(200);
    // The lease still names the policy it was granted with: the agent's state dir keeps the new one.
    expect((await file.mc.leases(vm.uuid))[0]?.owner.onLeaseLoss).toEqual({ policy: 'kill' });

    await file.mc.agent('host-a').crash();
    await file.mc.agent('host-a').restart();
    // Re-adopted: the same VM process, holding its lease under the same token.
    const adopted = await waitFor(async () => (await file.mc.vms()).find((v) => v.uuid === vm.uuid && v.locks.length === 1) ?? false, { what: 'the VM re-adopted by the restarted agent', deadlineMs: 15_000 });
    expect([adopted.pid, adopted.locks[0]!.token]).toEqual([vm.pid, vm.locks[0]!.token]);

    const regranted = await pausedThroughOutage('host-a', vm.uuid, vm.pid, vm.locks[0]!.token);
    expect(regranted).toMatchObject({ host: 'host-a', owner: { onLeaseLoss: { policy: 'pause' } } });
    expect((await writtenUnder(root, regranted.token, 3)).map((e) => [e.host, e.token])).toEqual([
      ['host-a', vm.locks[0]!.token],
      ['host-a', regranted.token],
    ]);
  });
});
