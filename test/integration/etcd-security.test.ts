import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { asBatonError, BatonError } from '@baton/core';
import { EtcdConfigSchema, EtcdConnection, type EtcdConfigInput } from '@baton/etcd';
import { exitOf, runCli, ScratchDir, type CliResult } from '../support/agent-io.js';
import { AgentProcess, etcdctl, EtcdctlError, EtcdServer, ManagedProcess, SharedStorage, TestPki, waitFor } from '../support/index.js';

/**
 * etcd as production runs it: clients authenticated by TLS certificates, and etcd users whose
 * role reaches only their cluster's prefix. The commands are the ones docs/cluster.md gives.
 */
const TTL_SECONDS = 4;
const why = (r: CliResult): string => `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

/** `baton agent` with this etcd section, run to its end: an agent etcd refuses must exit, naming why. */
async function agentRefused(storage: SharedStorage, scratch: ScratchDir, hostId: string, etcd: EtcdConfigInput): Promise<CliResult> {
  const dir = join(scratch.path, hostId);
  const config = AgentProcess.configFor(dir, { storage, hostId, config: { etcd } });
  const path = join(scratch.path, `${hostId}.json`);
  writeFileSync(path, JSON.stringify(config));
  return runCli(['agent', '--config', path], { deadlineMs: 30_000 });
}

describe('etcd over TLS with client certificates (--client-cert-auth)', () => {
  it('serves an agent that presents a certificate of the cluster’s CA, and refuses one without (or with another CA’s)', async () => {
    await using pki = await TestPki.create();
    const { ca } = pki;
    await using etcd = await EtcdServer.start({
      tls: { caFile: ca.caFile, ...ca.server, clientCertAuth: true, probeCertFile: ca.client.certFile, probeKeyFile: ca.client.keyFile },
    });
    expect(etcd.clientUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    await using storage = await SharedStorage.create();
    await using scratch = await ScratchDir.create('etcd-tls');
    const cluster = `c${randomUUID().slice(0, 8)}`;
    const prefix = `/baton/${cluster}/`;
    const disk = storage.image('vm-tls.img');

    // The agent with the CA and its client certificate: a full member.
    const tls = { caFile: ca.caFile, certFile: ca.client.certFile, keyFile: ca.client.keyFile };
    await using agent = await AgentProcess.start({ storage, hostId: 'host-tls', config: { etcd: { endpoints: etcd.endpoints, cluster, ttlSeconds: TTL_SECONDS, tls } } });
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name: 'vm-tls' } });
    const { grants } = await c.request('acquire', { resources: [{ name: disk }] });
    expect(grants[0]!.token).toBeGreaterThan(0);
    expect((await c.request('clusterLocks', {})).leases).toMatchObject([{ host: 'host-tls', resource: disk, mode: 'exclusive', token: grants[0]!.token }]);
    // etcdctl with the same certificate sees the host record and the lease under the cluster's prefix.
    const keys = await etcdctl(etcd.clientUrl, ['get', '--prefix', '--keys-only', prefix], { tls });
    expect(keys).toContain(`${prefix}hosts/host-tls`);
    expect(keys).toMatch(new RegExp(`^${prefix}r/images/[0-9a-f]{64}/excl$`, 'm'));

    // Without a client certificate, or with one another CA signed, etcd closes the handshake.
    const refused = [
      ['host-nocert', { caFile: ca.caFile }],
      ['host-rogue', { caFile: ca.caFile, certFile: pki.rogue.client.certFile, keyFile: pki.rogue.client.keyFile }],
    ] as const;
    // The agent does not start: etcd refuses its session at the handshake; it says so with a stable
    // code and exits at once (a refusal is not an outage: no start-up patience).
    const runs = await Promise.all(refused.map(([hostId, t]) => agentRefused(storage, scratch, hostId, { endpoints: etcd.endpoints, cluster, ttlSeconds: 2, tls: t })));
    for (const r of runs) {
      expect(r.status, why(r)).toBe(5);
      expect(r.stderr).toMatch(/^baton agent: DENIED: etcd refused a session grant at the TLS handshake/m);
    }
    for (const [hostId, refusedTls] of refused) {
      // Nor can the same credentials read anything.
      await using conn = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: etcd.endpoints, cluster, ttlSeconds: TTL_SECONDS, tls: refusedTls }));
      const err = await conn.range(prefix, { prefix: true }).then(() => undefined, asBatonError);
      expect(err, hostId).toBeInstanceOf(BatonError);
      // etcd's TLS alert reaches the client as a failed connection; Baton reads it as the refusal it is.
      expect(err!.code).toBe('DENIED');
      expect(err!.message).toMatch(/bad certificate/);
      await expect(etcdctl(etcd.clientUrl, ['--dial-timeout=1s', '--command-timeout=1s', 'get', '--prefix', prefix], { tls: refusedTls })).rejects.toBeInstanceOf(EtcdctlError);
    }
    // Nothing of the refused hosts reached etcd; the member's lease is untouched.
    expect((await c.request('hosts', {})).hosts.map((h) => h.host)).toEqual(['host-tls']);
    expect((await c.request('clusterLocks', {})).leases.map((l) => l.token)).toEqual([grants[0]!.token]);
    await c.request('release', {});
    expect((await c.request('clusterLocks', {})).leases).toEqual([]);
  });
});

describe('etcd with authentication: one role per cluster, limited to its prefix', () => {
  it('serves agents whose user has readwrite on /baton/<cluster>/ only (grant, release, views, fence, stop), and refuses that user anything outside it', async () => {
    await using etcd = await EtcdServer.start();
    await using storage = await SharedStorage.create();
    await using scratch = await ScratchDir.create('etcd-auth');
    const cluster = `c${randomUUID().slice(0, 8)}`;
    const prefix = `/baton/${cluster}/`;
    const role = `baton-${cluster}`;
    const user = `baton-agent-${cluster}`;
    const root = { name: 'root', password: randomBytes(16).toString('hex') };
    const password = randomBytes(16).toString('hex');
    const ctl = (args: string[], as?: { name: string; password: string }): Promise<string> => etcdctl(etcd.clientUrl, args, as === undefined ? {} : { user: as });

    // The set-up docs/cluster.md gives, command for command.
    await ctl(['user', 'add', 'root', `--new-user-password=${root.password}`]);
    await ctl(['role', 'add', role]);
    await ctl(['role', 'grant-permission', role, '--prefix=true', 'readwrite', prefix]);
    await ctl(['user', 'add', user, `--new-user-password=${password}`]);
    await ctl(['user', 'grant-role', user, role]);
    await ctl(['auth', 'enable']);
    expect(await ctl(['role', 'get', role], root)).toContain(`[${prefix}, ${prefix.slice(0, -1)}0) (prefix ${prefix})`);
    // Anonymous clients get nothing any more.
    await expect(ctl(['get', '--prefix', prefix])).rejects.toBeInstanceOf(EtcdctlError);

    const passwordFile = join(scratch.path, 'etcd-password');
    writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
    expect(statSync(passwordFile).mode & 0o777).toBe(0o600);
    const auth = { username: user, passwordFile };

    // Two agents under that user: sessions, grants, the views, a release.
    const etcdSection = { endpoints: etcd.endpoints, cluster, ttlSeconds: TTL_SECONDS, auth };
    const disk = storage.image('vm-auth.img');
    const diskB = storage.image('vm-auth-b.img');
    await using agent = await AgentProcess.start({ storage, hostId: 'host-auth', config: { etcd: etcdSection } });
    mkdirSync(join(storage.root, 'locks-b'));
    await using agentB = await AgentProcess.start({
      storage,
      hostId: 'host-auth-b',
      config: { etcd: etcdSection, lockspaces: [{ name: 'images', kind: 'indirect', dir: join(storage.root, 'locks-b'), roots: [storage.imagesDir] }] },
    });
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name: 'vm-auth' } });
    const { grants } = await c.request('acquire', { resources: [{ name: disk }] });
    // Bound to a process, not to the connection: the crash below must leave its lease to the fence.
    await using vmB = await ManagedProcess.spawn({ name: 'vm-auth-b', command: 'sleep', args: ['120'] });
    const cb = await agentB.client();
    await cb.request('register', { owner: { uuid: randomUUID(), name: 'vm-auth-b', pid: vmB.pid }, liveness: 'pid' });
    const { grants: grantsB } = await cb.request('acquire', { resources: [{ name: diskB }] });
    expect((await c.request('clusterLocks', {})).leases).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ host: 'host-auth', resource: disk, token: grants[0]!.token }),
        expect.objectContaining({ host: 'host-auth-b', resource: diskB, token: grantsB[0]!.token }),
      ]),
    );
    const hosts = (await c.request('hosts', {})).hosts;
    expect(hosts.map((h) => h.host).sort()).toEqual(['host-auth', 'host-auth-b']);
    for (const h of hosts) expect(h.ttlLeftSeconds).toBeGreaterThan(0);
    expect(await ctl(['get', '--prefix', '--keys-only', prefix], { name: user, password })).toContain(`${prefix}hosts/host-auth`);
    expect((await c.request('release', {})).released).toHaveLength(1);

    // An operator fence revokes another host's session: etcd checks write permission on every key
    // attached to it, all under the prefix, so the role is enough.
    await agentB.crash();
    await waitFor(
      async () => {
        const view = (await c.request('hosts', {})).hosts.find((h) => h.host === 'host-auth-b');
        if (view === undefined) throw new Error('host-auth-b’s session expired before the declaration could be made');
        return view.lastKeepaliveAgoSeconds >= TTL_SECONDS / 2;
      },
      { what: 'host-auth-b’s session to stop renewing', deadlineMs: TTL_SECONDS * 1000, intervalMs: 50 },
    );
    const fenced = await c.request('fenceHost', { host: 'host-auth-b', iHaveFenced: true, reason: 'powered off (test)' });
    expect(fenced).toMatchObject({ host: 'host-auth-b', released: 1 });
    expect((await c.request('clusterLocks', {})).leases).toEqual([]);
    expect(await ctl(['get', '--print-value-only', fenced.audit], root)).toContain('"reason":"powered off (test)"');

    // Another cluster's user, on the same etcd, can neither read this cluster nor revoke its sessions.
    const otherRole = `baton-${cluster}-other`;
    const otherUser = { name: `baton-agent-${cluster}-other`, password: randomBytes(16).toString('hex') };
    await ctl(['role', 'add', otherRole], root);
    await ctl(['role', 'grant-permission', otherRole, '--prefix=true', 'readwrite', `/baton/${cluster}-other/`], root);
    await ctl(['user', 'add', otherUser.name, `--new-user-password=${otherUser.password}`], root);
    await ctl(['user', 'grant-role', otherUser.name, otherRole], root);
    const otherFile = join(scratch.path, 'other-password');
    writeFileSync(otherFile, `${otherUser.password}\n`, { mode: 0o600 });
    await using other = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: etcd.endpoints, cluster: `${cluster}-other`, auth: { username: otherUser.name, passwordFile: otherFile } }));
    await other.put(`/baton/${cluster}-other/probe`, 'x');
    const session = BigInt(`0x${(await c.request('hosts', {})).hosts[0]!.session}`).toString();
    expect(await other.leaseRevoke(session).then(() => undefined, asBatonError)).toMatchObject({ code: 'DENIED' });
    expect(await other.range(prefix, { prefix: true }).then(() => undefined, asBatonError)).toMatchObject({ code: 'DENIED' });
    expect((await c.request('hosts', {})).hosts.map((h) => h.host)).toEqual(['host-auth']);

    // A clean stop revokes the agent's own session; the host record, attached to it, goes with it.
    const stop = await runCli(['agent', 'stop', '--socket', agent.socketPath]);
    expect(stop.status, why(stop)).toBe(0);
    expect(await exitOf(agent.json.proc)).toEqual({ code: 0, signal: null });
    expect(await ctl(['get', '--prefix', '--keys-only', `${prefix}hosts/`], root)).toBe('');

    // The same credentials, used directly: the prefix is theirs, nothing else is.
    await using conn = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: etcd.endpoints, cluster, auth }));
    await conn.put(`${prefix}probe`, 'inside');
    expect((await conn.range(`${prefix}probe`)).kvs.map((kv) => kv.value.toString())).toEqual(['inside']);
    for (const outside of ['/other/key', `/baton/${cluster}x/key`, '/baton/other-cluster/hosts/h1', `/baton/${cluster}`]) {
      expect(await conn.put(outside, 'outside').then(() => undefined, asBatonError), outside).toMatchObject({ code: 'DENIED' });
    }
    expect(await conn.range('/other/', { prefix: true }).then(() => undefined, asBatonError)).toMatchObject({ code: 'DENIED' });
    expect(await ctl(['get', '--prefix', '/other/'], root)).toBe('');

    // A wrong password is refused as such.
    const wrongFile = join(scratch.path, 'wrong-password');
    writeFileSync(wrongFile, 'not-the-password\n', { mode: 0o600 });
    await using wrong = new EtcdConnection(EtcdConfigSchema.parse({ endpoints: etcd.endpoints, cluster, auth: { username: user, passwordFile: wrongFile } }));
    expect(await wrong.range(prefix, { prefix: true }).then(() => undefined, asBatonError)).toMatchObject({ code: 'DENIED' });
  });
});
