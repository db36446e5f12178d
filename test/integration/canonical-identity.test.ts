import { createHash, randomUUID } from 'node:crypto';
import { linkSync, mkdirSync, realpathSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AgentClient } from '@baton/agent';
import { AgentProcess, SharedStorage, tryLockFrom } from '../support/index.js';

/**
 * One image is one resource however a client spells its path: otherwise two VMs could open one
 * disk because libvirt and a hook wrote its path differently.
 */
describe('canonical resource identity', () => {
  async function owner(agent: AgentProcess, name: string): Promise<AgentClient> {
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name } });
    return c;
  }

  /** The canonical path and other spellings of it: a symlink, "./", "dir/../" and "//". */
  function spellings(storage: SharedStorage): { canonical: string; others: Record<string, string> } {
    const canonical = realpathSync(storage.image('vm.img'));
    mkdirSync(join(storage.imagesDir, 'sub'));
    symlinkSync(canonical, join(storage.imagesDir, 'alias.img'));
    return {
      canonical,
      others: {
        symlink: join(storage.imagesDir, 'alias.img'),
        dot: `${storage.imagesDir}/./vm.img`,
        parent: `${storage.imagesDir}/sub/../vm.img`,
        'double slash': `${storage.imagesDir}//vm.img`,
      },
    };
  }

  it('locks every spelling of one image as one resource, at the lock file named by the sha256 of its real path', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const { canonical, others } = spellings(storage);
    const lockPath = join(realpathSync(storage.lockDir), createHash('sha256').update(canonical).digest('hex'));
    const vm = await owner(agent, 'vm');
    const intruder = await owner(agent, 'intruder');

    const first = (await vm.request('acquire', { resources: [{ name: canonical }] })).grants[0]!;
    expect(first).toMatchObject({ resource: canonical, lockPath });
    expect(await tryLockFrom(lockPath)).toBe('busy');
    for (const [how, name] of Object.entries(others)) {
      await expect(intruder.request('acquire', { resources: [{ name }] }), how).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
      // Asking again under another name is no second grant for the holder either.
      await expect(vm.request('acquire', { resources: [{ name }] }), how).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    }
    // Released by a spelling other than the one it was acquired by.
    const released = (await vm.request('release', { resources: [{ name: others.symlink! }] })).released;
    expect(released).toEqual([expect.objectContaining({ resource: canonical, lockPath, token: first.token })]);

    // Each spelling, acquired on its own, names the same resource and lock file; each releases by another.
    const names = Object.values(others);
    for (const [i, name] of names.entries()) {
      const grant = (await intruder.request('acquire', { resources: [{ name }] })).grants[0]!;
      expect(grant, name).toMatchObject({ resource: canonical, lockPath });
      await expect(vm.request('acquire', { resources: [{ name: canonical }] }), name).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
      const other = names[(i + 1) % names.length]!;
      expect((await intruder.request('release', { resources: [{ name: other }] })).released, other).toHaveLength(1);
    }
    expect((await intruder.request('inquire')).locks).toEqual([]);
  });

  it('refuses another spelling of an image held on another host sharing the lock directory', async () => {
    await using storage = await SharedStorage.create();
    await using a = await AgentProcess.start({ storage, hostId: 'host-a' });
    await using b = await AgentProcess.start({ storage, hostId: 'host-b' });
    const { canonical, others } = spellings(storage);
    const onA = await owner(a, 'vm');
    const onB = await owner(b, 'vm-elsewhere');

    // The two hosts share no table: only the lock file's name can make the spellings meet.
    await onA.request('acquire', { resources: [{ name: others.symlink! }] });
    for (const [how, name] of Object.entries({ canonical, ...others })) {
      await expect(onB.request('acquire', { resources: [{ name }] }), how).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    }
  });

  it('refuses a hard link to an image locked in a direct lockspace', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage, config: { lockspaces: [{ name: 'direct', kind: 'direct', roots: [storage.imagesDir] }] } });
    const image = realpathSync(storage.image('vm.img'));
    const hardLink = join(storage.imagesDir, 'same-inode.img');
    linkSync(image, hardLink);
    const vm = await owner(agent, 'vm');
    const intruder = await owner(agent, 'intruder');

    const grant = (await vm.request('acquire', { resources: [{ name: image }] })).grants[0]!;
    expect(grant.lockPath).toBe(image);
    await expect(intruder.request('acquire', { resources: [{ name: hardLink }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    await expect(intruder.request('acquire', { resources: [{ name: hardLink, mode: 'shared' }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    // Through either name, the file itself is locked against other processes.
    expect(await tryLockFrom(hardLink)).toBe('busy');
    expect((await intruder.request('inquire')).locks).toEqual([]);

    await vm.request('release', {});
    expect((await intruder.request('acquire', { resources: [{ name: hardLink }] })).grants[0]!.lockPath).toBe(hardLink);
    await expect(vm.request('acquire', { resources: [{ name: image }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
  });
});
