import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBatonError, BatonError } from '@baton/core';
import { Bus, BusConfigSchema, type BusConfigInput } from '@baton/bus';
import { runCli, ScratchDir, type CliResult } from '../support/agent-io.js';
import { AgentProcess, EtcdServer, NatsServer, SharedStorage, TestPki, waitFor } from '../support/index.js';

/**
 * NATS as production runs it: TLS with client certificates, one user per host allowed to serve
 * its own host's commands only, and a coordinator user. The nats-server configuration is the one
 * docs/cluster.md gives under "### NATS", read from the page; only its file names and passwords
 * are this run's.
 */
const CLUSTER = 'prod';
const USERS = ['coordinator', 'hv-01', 'hv-02'] as const;
type User = (typeof USERS)[number];
const why = (r: CliResult): string => `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
/** `text` as a regular expression that matches it literally. */
const literal = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The ```conf block of docs/cluster.md's "### NATS", its placeholders replaced. */
function documentedConfig(files: Record<string, string>, passwords: Record<User, string>): string {
  const doc = readFileSync(new URL('../../docs/cluster.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('\n### NATS\n'));
  const block = /^```conf\n([\s\S]*?)^```$/m.exec(section)?.[1];
  if (block === undefined) throw new Error('docs/cluster.md has no ```conf block under "### NATS"');
  let conf = block;
  for (const [placeholder, file] of Object.entries(files)) {
    // A page edit that drops a placeholder must fail here, not run another configuration.
    expect(conf, placeholder).toContain(placeholder);
    conf = conf.replaceAll(placeholder, file);
  }
  for (const user of USERS) {
    const placeholder = `"<${user} password>"`;
    expect(conf, placeholder).toContain(placeholder);
    conf = conf.replaceAll(placeholder, JSON.stringify(passwords[user]));
  }
  return conf;
}

let pki: TestPki;
let scratch: ScratchDir;
let nats: NatsServer;
const passwordFiles = {} as Record<User, string>;
let wrongPasswordFile: string;

beforeAll(async () => {
  pki = await TestPki.create({ clientCn: 'hv-01' });
  scratch = await ScratchDir.create('nats-sec');
  const passwords = Object.fromEntries(USERS.map((u) => [u, randomBytes(16).toString('hex')])) as Record<User, string>;
  for (const user of USERS) {
    passwordFiles[user] = join(scratch.path, `${user}-password`);
    writeFileSync(passwordFiles[user], `${passwords[user]}\n`, { mode: 0o600 });
  }
  wrongPasswordFile = join(scratch.path, 'wrong-password');
  writeFileSync(wrongPasswordFile, 'not-the-password\n', { mode: 0o600 });
  const { ca } = pki;
  const config = documentedConfig({ '/etc/nats/server.crt': ca.server.certFile, '/etc/nats/server.key': ca.server.keyFile, '/etc/nats/ca.crt': ca.caFile }, passwords);
  nats = await NatsServer.start({ jetstream: true, config });
});

afterAll(async () => {
  await nats?.close();
  await scratch?.[Symbol.asyncDispose]();
  await pki?.[Symbol.asyncDispose]();
});

/** A host's (or the coordinator's) `nats` section: its user, the cluster's CA and the client certificate. */
function section(user: User | undefined, over: Partial<BusConfigInput> = {}): BusConfigInput {
  return {
    servers: [nats.tlsUrl],
    cluster: CLUSTER,
    requestTimeoutMs: 500,
    tls: { caFile: pki.ca.caFile, certFile: pki.ca.client.certFile, keyFile: pki.ca.client.keyFile },
    ...(user === undefined ? {} : { auth: { username: `baton-${CLUSTER}-${user}`, passwordFile: passwordFiles[user] } }),
    ...over,
  };
}

/** A Bus as `user`, and the refusals NATS reported to it asynchronously. */
async function connectAs(user: User | undefined, over: Partial<BusConfigInput> = {}): Promise<{ bus: Bus; reported: BatonError[] }> {
  const reported: BatonError[] = [];
  const bus = await Bus.connect(BusConfigSchema.parse(section(user, over)), `test ${user ?? 'anonymous'}`, { onError: (e) => reported.push(e) });
  return { bus, reported };
}

/** The refusal a connection attempt ends with (fails the test if it connects). */
async function refusedConnect(user: User | undefined, over: Partial<BusConfigInput> = {}): Promise<BatonError> {
  const outcome = await connectAs(user, over).then(async ({ bus }) => {
    await bus.close();
    return undefined;
  }, asBatonError);
  expect(outcome, 'the connection was accepted').toBeInstanceOf(BatonError);
  return outcome!;
}

describe('NATS users: one per host, serving its own host only', () => {
  it('lets a host’s user serve and answer its own commands only, and the coordinator’s command every host and keep the history', async () => {
    const { bus: coordinator, reported: coordinatorReported } = await connectAs('coordinator');
    await using _c = coordinator;
    const { bus: hv01, reported } = await connectAs('hv-01');
    await using _a = hv01;
    const { bus: hv02 } = await connectAs('hv-02');
    await using _b = hv02;
    const s = coordinator.subjects;
    expect(s.agent('hv-01', 'vm.destroy')).toBe('baton.prod.agent.hv-01.vm.destroy');

    // Its own subjects: taken, and answered (allow_responses is all an agent needs to reply).
    await hv01.serve(s.agent('hv-01', '>'), (_params, subject) => ({ host: 'hv-01', subject }));
    expect(await coordinator.request(s.agent('hv-01', 'vm.destroy'), {})).toEqual({ host: 'hv-01', subject: 'baton.prod.agent.hv-01.vm.destroy' });

    // Another host's subject, or a wildcard over every host: NATS refuses the subscription, and the
    // bus says so instead of serving nothing.
    let stolen = 0;
    for (const subject of [s.agent('hv-02', 'vm.destroy'), s.agent('*', 'vm.destroy'), `baton.${CLUSTER}.>`]) {
      const denied = await hv01.serve(subject, () => ++stolen).then(() => undefined, asBatonError);
      expect(denied, subject).toMatchObject({ code: 'DENIED', details: { operation: 'subscription', subject } });
      expect(denied!.message).toBe(`NATS refused user baton-prod-hv-01: Permissions Violation for Subscription to "${subject}"`);
    }
    // So a command to hv-02 has nobody to answer it until hv-02 serves; then hv-02 answers, never hv-01.
    expect(await coordinator.request(s.agent('hv-02', 'vm.destroy'), {}).then(() => undefined, asBatonError)).toMatchObject({ code: 'UNAVAILABLE' });
    await hv02.serve(s.agent('hv-02', '>'), () => ({ host: 'hv-02' }));
    expect(await coordinator.request(s.agent('hv-02', 'vm.destroy'), {})).toEqual({ host: 'hv-02' });
    expect(stolen).toBe(0);

    // A host's user sends no command (neither the request nor its inbox are allowed) and publishes no event.
    const sent = await hv01.request(s.agent('hv-02', 'vm.destroy'), {}).then(() => undefined, asBatonError);
    expect(sent?.code).toBe('DENIED');
    expect(sent?.message).toMatch(/^NATS refused user baton-prod-hv-01: Permissions Violation/);
    hv01.publish(s.event('migration', 'forged'), { phase: 'committed' });
    await waitFor(() => reported.some((e) => e.details?.['subject'] === s.event('migration', 'forged')), { what: 'the refused publish to be reported', deadlineMs: 5_000, intervalMs: 10 });
    expect(reported.map((e) => `${e.code}: ${e.message}`)).toContain(`DENIED: NATS refused user baton-prod-hv-01: Permissions Violation for Publish to "${s.event('migration', 'forged')}"`);
    // Nor does it reach JetStream.
    await expect(hv01.ensureHistory(`BATON_${CLUSTER}`)).rejects.toBeInstanceOf(BatonError);

    // The coordinator's user: events, and their history stream in JetStream.
    await coordinator.ensureHistory(`BATON_${CLUSTER}`);
    coordinator.publish(s.event('migration', 'm-1'), { id: 'm-1', phase: 'begun' });
    await coordinator.record(s.event('migration', 'm-1'), { id: 'm-1', phase: 'committed' });
    expect(coordinatorReported).toEqual([]);
  });

  it('refuses a wrong password and a client without credentials (DENIED), and a password file others can read (INVALID_CONFIG)', async () => {
    const wrong = await refusedConnect('hv-01', { auth: { username: 'baton-prod-hv-01', passwordFile: wrongPasswordFile } });
    expect(wrong.code).toBe('DENIED');
    expect(wrong.message).toBe(`NATS at ${nats.tlsUrl} refused user baton-prod-hv-01: Authorization Violation`);
    const anonymous = await refusedConnect(undefined);
    expect(anonymous.code).toBe('DENIED');
    expect(anonymous.message).toBe(`NATS at ${nats.tlsUrl} refused a client without credentials: Authorization Violation`);

    const readable = join(scratch.path, 'readable-password');
    writeFileSync(readable, 'x\n');
    chmodSync(readable, 0o640);
    const exposed = await refusedConnect('hv-01', { auth: { username: 'baton-prod-hv-01', passwordFile: readable } });
    expect(exposed).toMatchObject({ code: 'INVALID_CONFIG', details: { field: 'nats.auth.passwordFile', mode: '640' } });
    expect(exposed.message).toBe(`nats.auth.passwordFile ${readable} has mode 640; it must not be readable by group or others (chmod 600)`);
  });
});

describe('NATS over TLS with client certificates (verify: true)', () => {
  it('serves a client with a certificate of the cluster’s CA (tls:// or nats://), and refuses one without, or with another CA’s', async () => {
    for (const servers of [[nats.tlsUrl], [nats.url]]) {
      const { bus } = await connectAs('hv-01', { servers });
      await bus.close();
    }
    const { ca } = pki;
    const nocert = await refusedConnect('hv-01', { tls: { caFile: ca.caFile } });
    expect(nocert.code).toBe('DENIED');
    // The alert's name is OpenSSL's ("ssl/tls alert bad certificate" in OpenSSL 3, "sslv3 alert ..." before).
    expect(nocert.message).toMatch(new RegExp(`^${literal(`NATS at ${nats.tlsUrl} refused the TLS handshake: `)}[a-z/0-9]+ alert bad certificate ${literal('(client certificate: none)')}$`));
    const rogue = await refusedConnect('hv-01', { tls: { caFile: ca.caFile, certFile: pki.rogue.client.certFile, keyFile: pki.rogue.client.keyFile } });
    expect(rogue.code).toBe('DENIED');
    expect(rogue.message).toMatch(new RegExp(`^${literal(`NATS at ${nats.tlsUrl} refused the TLS handshake: `)}[a-z/0-9]+ alert bad certificate ${literal(`(client certificate: ${pki.rogue.client.certFile})`)}$`));
    // A tls section makes TLS required: a server that does not offer it is refused, not spoken to in clear.
    await using plain = await NatsServer.start();
    const cleartext = await refusedConnect(undefined, { servers: [plain.url] });
    expect(cleartext.code).toBe('DENIED');
    expect(cleartext.message).toBe(`NATS at ${plain.url} does not offer TLS, which nats.tls requires`);
    expect(BusConfigSchema.safeParse({ servers: [plain.tlsUrl] }).error?.issues).toEqual([expect.objectContaining({ path: ['tls'], message: 'tls:// servers need tls.caFile' })]);
    // A file the section names that cannot be read is the configuration's fault, named as such.
    const missing = join(scratch.path, 'missing-ca.crt');
    const noCa = await refusedConnect('hv-01', { tls: { caFile: missing } });
    expect(noCa).toMatchObject({ code: 'INVALID_CONFIG', details: { field: 'nats.tls.caFile' } });
    expect(noCa.message).toBe(`nats.tls.caFile ${missing} cannot be read (ENOENT)`);
    // Nor does this client trust a server its CA did not sign.
    const untrusted = await refusedConnect('hv-01', { tls: { caFile: pki.rogue.caFile, certFile: ca.client.certFile, keyFile: ca.client.keyFile } });
    expect(untrusted.code).toBe('DENIED');
    expect(untrusted.message).toMatch(new RegExp(`^${literal(`NATS at ${nats.tlsUrl} presented a certificate this process does not trust (nats.tls.caFile): `)}`));
  });
});

describe('agents under their NATS users', () => {
  it('serves the coordinator’s commands as its host’s user, and exits 5 (DENIED) naming NATS when its password is wrong', async () => {
    await using etcd = await EtcdServer.start();
    await using storage = await SharedStorage.create();
    const agentConfig = (user: User | undefined) => ({ etcd: { endpoints: etcd.endpoints, cluster: CLUSTER, ttlSeconds: 4 }, nats: section(user), hypervisor: { driver: 'sim' as const } });

    // Everything a real agent does on NATS at start, and answering a command, fits its user's permissions.
    await using agent = await AgentProcess.start({ storage, hostId: 'hv-01', config: agentConfig('hv-01') });
    const { bus: coordinator } = await connectAs('coordinator');
    await using _c = coordinator;
    // "agent started" comes once NATS has taken every subscription: the first command is answered.
    expect(await coordinator.request(coordinator.subjects.agent('hv-01', 'vm.list'), {})).toEqual({ vms: [] });
    expect(agent.json.proc.running).toBe(true);
    // Nothing it did was refused (a refusal would be a DENIED line in its log).
    expect(agent.json.proc.output()).not.toContain('DENIED');

    // Another host started with hv-01's user: NATS takes the connection but refuses every
    // subscription. The agent does not go on serving nothing: it exits 5 (DENIED), naming the
    // subject, with the refusal in its log (the first one: it stops at that).
    const impostorPath = join(scratch.path, 'hv-03.json');
    writeFileSync(impostorPath, JSON.stringify(AgentProcess.configFor(join(scratch.path, 'hv-03'), { storage, hostId: 'hv-03', config: agentConfig('hv-01') })));
    const impostor = await runCli(['agent', '--config', impostorPath], { deadlineMs: 30_000 });
    expect(impostor.status, why(impostor)).toBe(5);
    const subjectRefused = (verb: string): string => `NATS refused user baton-prod-hv-01: Permissions Violation for Subscription to "baton.prod.agent.hv-03.${verb}"`;
    expect(impostor.stderr).toMatch(new RegExp(`^baton agent: DENIED: ${literal(subjectRefused('vm.start'))}$`, 'm'));
    const logged = impostor.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { code?: string; msg: string });
    const denied = logged.filter((l) => l.code === 'DENIED').map((l) => l.msg);
    expect(denied).toContain(subjectRefused('vm.start'));
    expect(denied).toContain(`agent failed to start: ${subjectRefused('vm.start')}`);
    expect(logged.map((l) => l.msg)).not.toContain('agent started');
    expect(await coordinator.request(coordinator.subjects.agent('hv-03', 'vm.list'), {}).then(() => undefined, asBatonError)).toMatchObject({ code: 'UNAVAILABLE' });

    // hv-02 with a wrong password, given through the environment as an operator would
    // (BATON_NATS_AUTH_*): it joins etcd, then NATS refuses it, and it exits at once.
    const path = join(scratch.path, 'hv-02.json');
    writeFileSync(path, JSON.stringify(AgentProcess.configFor(join(scratch.path, 'hv-02'), { storage, hostId: 'hv-02', config: agentConfig(undefined) })));
    const r = await runCli(['agent', '--config', path], {
      deadlineMs: 30_000,
      env: { BATON_NATS_AUTH_USERNAME: 'baton-prod-hv-02', BATON_NATS_AUTH_PASSWORD_FILE: wrongPasswordFile },
    });
    expect(r.status, why(r)).toBe(5);
    expect(r.stderr).toMatch(new RegExp(`^${literal(`baton agent: DENIED: NATS at ${nats.tlsUrl} refused user baton-prod-hv-02: Authorization Violation`)}$`, 'm'));
  });
});
