import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentProcess, SharedStorage, startProbe, tryLockFrom } from '../support/index.js';

/**
 * QEMU takes its own image locks as OFD locks on bytes 100+ (permissions) and 200+ (shared
 * permissions); libvirt's virtlockd takes byte 0. The agent's lock must live beside QEMU's and
 * collide with virtlockd's.
 */
describe('QEMU image locking', () => {
  it('coexists with QEMU’s byte-100/200 OFD locks and refuses a virtlockd-style byte-0 locker', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage, config: { lockspaces: [{ name: 'direct', kind: 'direct', roots: [storage.imagesDir] }] } });
    const image = storage.image('guest.qcow2');
    await using qemu = await startProbe(image, ['--op', 'hold', '--lock-kind', 'ofd', '--mode', 'shared', '--range', '100:1', '--range', '200:1']);
    await qemu.event((e) => e.event === 'holding', 'QEMU-style locks held');

    const vm = await agent.client();
    await vm.request('register', { owner: { uuid: randomUUID(), name: 'guest' } });
    const { grants } = await vm.request('acquire', { resources: [{ name: image }] });
    expect(grants[0]!.lockPath).toBe(image);

    expect(await tryLockFrom(image, { kind: 'posix' })).toBe('busy');
    expect(await tryLockFrom(image, { kind: 'ofd' })).toBe('busy');
    // A second QEMU opening the image (e.g. the migration destination) still gets its own ranges.
    expect(await tryLockFrom(image, { kind: 'ofd', mode: 'shared', ranges: ['100:1', '200:1'] })).toBe('granted');
    // Why byte 0 and not the whole file: a whole-file lock (what fs-ext takes) collides with QEMU.
    await vm.request('release', {});
    expect(await tryLockFrom(image, { kind: 'posix', ranges: ['0:0'] })).toBe('busy');
    expect(await tryLockFrom(image, { kind: 'posix', ranges: ['0:1'] })).toBe('granted');
  });
});
