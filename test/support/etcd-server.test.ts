import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { etcdGet, etcdPut } from './etcd-gateway.js';
import { EtcdCluster, EtcdServer } from './etcd-server.js';
import { TestPki } from './pki.js';
import { pidAlive } from './process.js';
import { waitFor } from './wait-for.js';

describe('EtcdServer', () => {
  it('serves put and get through the gateway, survives restart, and cleans up', async () => {
    const server = await EtcdServer.start();
    const { clientUrl, dataDir } = server;
    expect(server.endpoints).toEqual([clientUrl]);
    expect(dataDir.startsWith('/dev/shm/')).toBe(existsSync('/dev/shm'));

    const revision = await etcdPut(clientUrl, 'baton/test/a', 'é1');
    expect(revision).toBeGreaterThan(1n);
    expect(await etcdGet(clientUrl, 'baton/test/a')).toBe('é1');
    expect(await etcdGet(clientUrl, 'baton/test/missing')).toBeUndefined();
    expect(await server.leader()).toBe(server);

    const firstPid = server.pid ?? -1;
    await server.restart();
    expect(server.pid).not.toBe(firstPid);
    expect(pidAlive(firstPid)).toBe(false);
    // Same port and data dir: the value written before the restart is still there.
    expect(await etcdGet(clientUrl, 'baton/test/a')).toBe('é1');

    const pid = server.pid ?? -1;
    await server.close();
    await server.close();
    expect(pidAlive(pid)).toBe(false);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('answers nothing while paused, and refuses connections once stopped', async () => {
    await using server = await EtcdServer.start();
    await server.pause();
    await expect(server.get('k', { timeoutMs: 200 })).rejects.toThrow();
    await server.resume();
    await waitFor(() => server.get('k').then(() => true), { what: 'etcd to answer after SIGCONT', deadlineMs: 3_000 });
    await server.stop();
    expect(server.running).toBe(false);
    await expect(server.get('k', { timeoutMs: 500 })).rejects.toThrow(/ECONNREFUSED/);
  });
});

describe('EtcdServer with TLS', () => {
  it('serves https only to clients with a certificate of its CA, and the harness’s own calls present one', async () => {
    await using pki = await TestPki.create();
    const { ca } = pki;
    await using server = await EtcdServer.start({
      tls: { caFile: ca.caFile, ...ca.server, clientCertAuth: true, probeCertFile: ca.client.certFile, probeKeyFile: ca.client.keyFile },
    });
    expect(server.clientUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    await server.put('baton/test/tls', 'yes');
    expect(await server.get('baton/test/tls')).toBe('yes');
    expect(await server.leader()).toBe(server);
    // The CA alone (no client certificate) is refused at the handshake; so is another CA's certificate.
    await expect(etcdGet(server.clientUrl, 'baton/test/tls', { tls: { ca: readFileSync(ca.caFile) } })).rejects.toThrow();
    await expect(
      etcdGet(server.clientUrl, 'baton/test/tls', { tls: { ca: readFileSync(ca.caFile), cert: readFileSync(pki.rogue.client.certFile), key: readFileSync(pki.rogue.client.keyFile) } }),
    ).rejects.toThrow();
  });
});

describe('EtcdCluster', () => {
  it('elects a new leader after the leader is SIGKILLed, and keeps accepting writes', async () => {
    await using cluster = await EtcdCluster.start({ members: 3 });
    expect(cluster.endpoints).toHaveLength(3);
    expect(new Set(cluster.endpoints).size).toBe(3);
    const old = await cluster.leader();
    await old.put('baton/test/before', '1');

    const killedAt = performance.now();
    await old.kill('SIGKILL');
    const next = await cluster.leader({ deadlineMs: 5_000 });
    const electionMs = performance.now() - killedAt;
    console.log(`etcd leader re-election after SIGKILL: ${electionMs.toFixed(0)} ms (${old.memberName} → ${next.memberName})`);
    expect(next).not.toBe(old);
    expect(electionMs).toBeLessThan(5_000);

    await next.put('baton/test/after', '2');
    const follower = cluster.members.find((m) => m !== old && m !== next);
    expect(await follower?.get('baton/test/after')).toBe('2');

    // The killed member rejoins on its old ports and data dir and catches up.
    await old.restart();
    expect(await old.get('baton/test/after')).toBe('2');

    const pids = cluster.members.map((m) => m.pid ?? -1);
    await cluster.close();
    for (const pid of pids) expect(pidAlive(pid)).toBe(false);
  });
});
