import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkDisk, MigrationCluster, migrationServers, pidAlive, processState, waitFor, writtenUnder } from '../support/index.js';

/**
 * A VM's lease-loss policy goes with it when it migrates: the destination runs it under the policy
 * the source ran it under (here one set by a definition after the VM's leases were granted), and
 * the moved leases name it. Shown by what the policy is for: etcd goes away past the hosts' TTL,
 * and the migrated VM is paused by its new host, not killed; when etcd is back it gets its leases
 * again with new tokens and runs on. Real etcd, NATS, agent processes and a sim VM.
 */
const servers = migrationServers();
let mc: MigrationCluster;
beforeAll(async () => {
  mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
  await mc.addCoordinator('coord-1');
  await mc.leader();
});
afterAll(async () => {
  await mc?.[Symbol.asyncDispose]();
});

describe('a migrated VM', () => {
  it('keeps the lease-loss policy it ran under: paused, not killed, by its new host when etcd is lost, and resumed with new tokens after', async () => {
    const vm = await mc.startVm('host-a', 'policy-vm', ['policy-vm-root.img']);
    const root = mc.disk('policy-vm-root.img');
    // Granted under the default (kill); the definition changes the policy only in the agent's hands.
    const defined = await mc.define('policy-vm', { disks: [{ path: root }], onLeaseLoss: { policy: 'pause' } });
    expect(defined.status, JSON.stringify(defined.body)).toBe(200);

    const done = await mc.migrate('policy-vm', 'host-b');
    expect(done.phase).toBe('done');
    expect(done.onLeaseLoss).toEqual({ policy: 'pause' });
    const [lease] = await mc.leases(vm.uuid);
    expect(lease).toMatchObject({ host: 'host-b', token: done.tokens.commit, owner: { uuid: vm.uuid, onLeaseLoss: { policy: 'pause' } } });
    const pid = (await mc.vms()).find((v) => v.uuid === vm.uuid && v.host === 'host-b')!.pid;
    await writtenUnder(root, done.tokens.commit!, 3);

    // etcd gone (its data kept) past the TTL: every host fences on its own clock.
    await servers.etcd.kill('SIGKILL');
    await waitFor(() => processState(pid) === 'T', { what: `the migrated VM (pid ${pid}) paused by host-b's fence`, deadlineMs: 15_000, intervalMs: 20 });
    expect(pidAlive(pid)).toBe(true);

    await servers.etcd.start();
    const regranted = await waitFor(
      async () => {
        const l = (await mc.leases(vm.uuid).catch(() => []))[0];
        return l !== undefined && l.token > done.tokens.commit! && processState(pid) !== 'T' ? l : false;
      },
      { what: 'the VM re-granted its lease and resumed on host-b', deadlineMs: 30_000, intervalMs: 50 },
    );
    expect(regranted).toMatchObject({ host: 'host-b', owner: { onLeaseLoss: { policy: 'pause' } } });
    await writtenUnder(root, regranted.token, 3);
    // One writer per token; the destination's tokens only grew.
    const epochs = checkDisk(root).map((e) => [e.host, e.token]);
    expect(epochs).toEqual([
      ['host-a', vm.locks[0]!.token],
      ['host-b', done.tokens.commit],
      ['host-b', regranted.token],
    ]);
  });
});
