import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BatonError } from '@baton/core';
import { AgentProcess, SharedStorage } from '../support/index.js';

/** Two agent processes sharing one lockspace directory, as two hosts share NFS. */
describe('two hosts on shared storage', () => {
  async function register(agent: AgentProcess, name: string) {
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name } });
    return c;
  }

  it('refuses an exclusive lock held on the other host, and grants it once released', async () => {
    await using storage = await SharedStorage.create();
    await using a = await AgentProcess.start({ storage, hostId: 'host-a' });
    await using b = await AgentProcess.start({ storage, hostId: 'host-b' });
    const disk = storage.image('vm1.img');
    const onA = await register(a, 'vm1');
    const onB = await register(b, 'vm1-copy');

    const first = await onA.request('acquire', { resources: [{ name: disk }] });
    await expect(onB.request('acquire', { resources: [{ name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    await onA.request('release', {});
    const second = await onB.request('acquire', { resources: [{ name: disk }] });
    expect(second.grants[0]!.token).toBeGreaterThan(first.grants[0]!.token);
  });

  it('lets shared holders on both hosts coexist, each with its own token, and keeps exclusive out', async () => {
    await using storage = await SharedStorage.create();
    await using a = await AgentProcess.start({ storage, hostId: 'host-a' });
    await using b = await AgentProcess.start({ storage, hostId: 'host-b' });
    const disk = storage.image('shared.img');
    const sa = await register(a, 'vm-a');
    const sb = await register(b, 'vm-b');
    const sa2 = await register(a, 'vm-a2');
    const xb = await register(b, 'vm-x');

    const g1 = (await sa.request('acquire', { resources: [{ name: disk, mode: 'shared' }] })).grants[0]!;
    const g2 = (await sb.request('acquire', { resources: [{ name: disk, mode: 'shared' }] })).grants[0]!;
    const g3 = (await sa2.request('acquire', { resources: [{ name: disk, mode: 'shared' }] })).grants[0]!;
    expect(new Set([g1.token, g2.token, g3.token]).size).toBe(3);
    expect(g2.token).toBeGreaterThan(g1.token);
    expect(g3.token).toBeGreaterThan(g2.token);

    // Exclusive against shared: refused on the host that holds it shared and on the other.
    await expect(xb.request('acquire', { resources: [{ name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    const xa = await register(a, 'vm-xa');
    await expect(xa.request('acquire', { resources: [{ name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });

    // Shared against exclusive: once every shared holder is gone, an exclusive holder keeps shared out.
    await sa.request('release', {});
    await sb.request('release', {});
    await sa2.request('release', {});
    const gx = (await xb.request('acquire', { resources: [{ name: disk }] })).grants[0]!;
    expect(gx.token).toBeGreaterThan(g3.token);
    await expect(sa.request('acquire', { resources: [{ name: disk, mode: 'shared' }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
  });

  it('issues strictly increasing tokens per resource across hosts and agent restarts', async () => {
    await using storage = await SharedStorage.create();
    const disk = storage.image('vm.img');
    const tokens: number[] = [];
    for (let round = 0; round < 3; round++) {
      await using a = await AgentProcess.start({ storage, hostId: 'host-a' });
      await using b = await AgentProcess.start({ storage, hostId: 'host-b' });
      for (const agent of [a, b, a, b]) {
        const c = await register(agent, 'vm');
        tokens.push((await c.request('acquire', { resources: [{ name: disk }] })).grants[0]!.token);
        await c.request('release', {});
        await c.close();
      }
    }
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]!).toBeGreaterThan(tokens[i - 1]!);
  });

  it('is all or none: a multi-disk acquire that meets one conflict takes nothing', async () => {
    await using storage = await SharedStorage.create();
    await using a = await AgentProcess.start({ storage, hostId: 'host-a' });
    await using b = await AgentProcess.start({ storage, hostId: 'host-b' });
    const [d1, d2, d3] = [storage.image('d1.img'), storage.image('d2.img'), storage.image('d3.img')];
    const holder = await register(b, 'holder');
    await holder.request('acquire', { resources: [{ name: d2 }] });
    const vm = await register(a, 'vm');
    const err = await vm.request('acquire', { resources: [{ name: d1 }, { name: d2 }, { name: d3 }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BatonError);
    expect((err as BatonError).code).toBe('RESOURCE_BUSY');
    expect((await vm.request('inquire', {})).locks).toEqual([]);
    // Nothing was left locked on host a: another owner there gets d1 and d3 at once.
    const other = await register(a, 'other');
    expect((await other.request('acquire', { resources: [{ name: d1 }, { name: d3 }] })).grants).toHaveLength(2);
  });
});
