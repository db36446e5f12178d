import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type ErrorCode, type HostedVm, type VmDefinitionInput } from '@baton/core';
import { AgentSteps } from '@baton/coordinator';
import { runCli } from '../support/agent-io.js';
import { migrationFile, readDiskRecords, waitFor, writtenUnder } from '../support/index.js';

/**
 * A VM's definition changed while it is not migrating (seed 002's other half is in
 * vm-definition-migration.test.ts): `PUT /v1/vms/:vm/definition` applies it at once on the host
 * that holds the VM's leases. Real etcd, NATS and agent processes with sim VMs writing through the
 * fence guard; one cluster for the file, each test with its own VMs and disks.
 */
const file = migrationFile();

describe('a VM definition change, not in flight', () => {
  it('is applied at once: an added disk is leased and written, a removed one released and no longer written', async () => {
    const vm = await file.mc.startVm('host-a', 'def-apply', ['def-apply-root.img']);
    const [root, data] = [file.mc.disk('def-apply-root.img'), file.mc.disk('def-apply-data.img')];
    const rootToken = vm.locks[0]!.token;

    const added = await file.mc.define('def-apply', { disks: [{ path: root }, { path: data }], onLeaseLoss: { policy: 'pause' } });
    expect(added.status, JSON.stringify(added.body)).toBe(200);
    expect(added.body).toMatchObject({ applied: true, vm: { uuid: vm.uuid, host: 'host-a', state: 'running' } });
    const leases = await file.mc.leaseMap(vm.uuid);
    // The kept disk keeps its lease and token; the new one is leased to the same host.
    expect(leases[root]).toEqual(['host-a', rootToken]);
    expect(leases[data]?.[0]).toBe('host-a');
    const dataToken = leases[data]![1];
    expect((added.body as { vm: HostedVm }).vm.locks.map((l) => [l.resource, l.token]).sort()).toEqual([[data, dataToken], [root, rootToken]].sort());
    expect((await writtenUnder(data, dataToken, 3)).map((e) => [e.host, e.token])).toEqual([['host-a', dataToken]]);

    const removed = await file.mc.define(vm.uuid, { disks: [{ path: data }] });
    expect(removed.status, JSON.stringify(removed.body)).toBe(200);
    expect(await file.mc.leaseMap(vm.uuid)).toEqual({ [data]: ['host-a', dataToken] });
    // The VM stopped writing the root disk before the define answered: later writes go to data only.
    const rootWrites = readDiskRecords(root).length;
    const dataWrites = readDiskRecords(data).length;
    await waitFor(() => readDiskRecords(data).length >= dataWrites + 5, { what: 'five more writes to the data disk', deadlineMs: 5_000 });
    expect(readDiskRecords(root)).toHaveLength(rootWrites);
    // Released for real (lease and local lock): another VM on another host can take it.
    const other = await file.mc.startVm('host-b', 'def-apply-2', ['def-apply-root.img']);
    expect(other.locks.map((l) => l.resource)).toEqual([root]);
    expect((await writtenUnder(root, other.locks[0]!.token, 3)).map((e) => e.host)).toEqual(['host-a', 'host-b']);
  });

  it('refuses bad input with its catalogue code and changes nothing', async () => {
    const vm = await file.mc.startVm('host-a', 'def-bad', ['def-bad.img']);
    const busy = await file.mc.startVm('host-a', 'def-busy', ['def-busy.img']);
    const [disk, other] = [file.mc.disk('def-bad.img'), file.mc.disk('def-busy.img')];
    const before = await file.mc.leaseMap(vm.uuid);

    const refusals: [VmDefinitionInput, number, ErrorCode][] = [
      [{ disks: [{ path: 'def-bad.img' }] }, 400, 'INVALID_REQUEST'],
      [{ disks: [{ path: disk }, { path: file.mc.disk('def-bad-2.img'), lockspace: 'nowhere' }] }, 404, 'NO_LOCKSPACE'],
      [{ disks: [{ path: disk }, { path: file.mc.storage.lockDir }] }, 400, 'OUTSIDE_LOCKSPACE'],
      [{ disks: [{ path: disk }, { path: `${file.mc.storage.imagesDir}/def-bad-missing.img` }] }, 404, 'RESOURCE_NOT_FOUND'],
      [{ disks: [{ path: disk, mode: 'shared' }] }, 400, 'INVALID_REQUEST'],
      [{ disks: [{ path: disk }], onLeaseLoss: { policy: 'killpath' } }, 400, 'INVALID_REQUEST'],
      // Another VM's disk: refused when its lease is asked for, so the kept disk is untouched too.
      [{ disks: [{ path: disk }, { path: other }] }, 409, 'RESOURCE_BUSY'],
    ];
    for (const [definition, status, code] of refusals) {
      const res = await file.mc.define('def-bad', definition);
      expect([res.status, (res.body as { error?: { code: string } }).error?.code], JSON.stringify(definition)).toEqual([status, code]);
    }
    expect((await file.mc.define('no-such-vm', { disks: [{ path: disk }] })).status).toBe(404);
    expect(await file.mc.leaseMap(vm.uuid)).toEqual(before);
    expect((await file.mc.leases(busy.uuid)).map((l) => l.resource)).toEqual([other]);
    const now = (await file.mc.vms()).find((v) => v.uuid === vm.uuid)!;
    expect(now.locks.map((l) => [l.resource, l.token])).toEqual(vm.locks.map((l) => [l.resource, l.token]));
    await writtenUnder(disk, vm.locks[0]!.token, 3);
  });

  it('on the agent, waits for a start in progress: a define sent right after vm.start is applied after it', async () => {
    await using bus = await file.mc.connectBus('vm-definition test');
    const uuid = randomUUID();
    const [root, data] = [file.mc.disk('def-queue-root.img'), file.mc.disk('def-queue-data.img')];
    const agents = new AgentSteps(bus, { stepMs: 20_000, sendMs: 20_000 });
    const answered: string[] = [];
    const sent = <T>(verb: string, answer: Promise<T>): Promise<T> => answer.then((r) => (answered.push(verb), r));
    // Sent back to back: the define reaches the agent while the VM's process is still being spawned.
    const start = sent('vm.start', agents.command('host-a', 'vm.start', { uuid, name: 'def-queue', disks: [{ path: root }] }, 'send'));
    const define = sent('vm.define', agents.command('host-a', 'vm.define', { uuid, definition: { disks: [{ path: root }, { path: data }] } }, 'send'));
    const [started, defined] = await Promise.all([start, define]);

    expect(answered).toEqual(['vm.start', 'vm.define']);
    expect(started.locks.map((l) => l.resource)).toEqual([root]);
    expect(defined.locks.map((l) => l.resource).sort()).toEqual([root, data].sort());
    const leases = await file.mc.leaseMap(uuid);
    expect(Object.keys(leases).sort()).toEqual([root, data].sort());
    await writtenUnder(data, leases[data]![1], 3);
    const log = file.mc.agent('host-a').json.events().map((e) => e.msg);
    expect(log.indexOf('VM def-queue redefined')).toBeGreaterThan(log.indexOf('VM def-queue started'));
  });

  it('baton vm define: prints the VM as redefined, or the answer with --json; a bad --disk is a usage error', async () => {
    const vm = await file.mc.startVm('host-a', 'def-cli', ['def-cli-root.img']);
    const [root, data] = [file.mc.disk('def-cli-root.img'), file.mc.disk('def-cli-data.img')];
    const url = file.mc.coordinators[0]!.url;
    const r = await runCli(['vm', 'define', 'def-cli', '--disk', root, '--disk', `${data}:exclusive:images`, '--on-lease-loss', 'pause', '--coordinator', url], { deadlineMs: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`VM def-cli (${vm.uuid}) redefined on host-a`);
    expect(r.stdout).toContain(data);

    const json = await runCli(['vm', 'define', vm.uuid, '--disk', data, '--json', '--coordinator', url], { deadlineMs: 30_000 });
    expect(json.status, json.stderr).toBe(0);
    const answer = JSON.parse(json.stdout) as { applied: boolean; vm: HostedVm };
    expect(answer.applied).toBe(true);
    expect(answer.vm.locks.map((l) => l.resource)).toEqual([data]);

    const bad = await runCli(['vm', 'define', 'def-cli', '--disk', `${data}:sometimes`, '--coordinator', url], { deadlineMs: 30_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('error INVALID_REQUEST');
    expect(Object.keys(await file.mc.leaseMap(vm.uuid))).toEqual([data]);
  });
});
