import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBatonError, BatonError } from '@baton/core';
import { Bus, BusConfigSchema } from '@baton/bus';
import { NatsServer, TcpClient, waitFor } from '../support/index.js';

/** The NATS adapter against a real nats-server: commands, catalogue errors, events, history. */
let nats: NatsServer;
beforeAll(async () => {
  nats = await NatsServer.start({ jetstream: true });
});
afterAll(async () => {
  await nats?.close();
});

/**
 * A bare NATS protocol client, to send and answer what the Bus never would: one subscription per
 * call, each confirmed by a PING/PONG before it is relied on.
 */
async function rawNats(port: number, signal: AbortSignal) {
  const tcp = await TcpClient.connect(port, { signal });
  expect(await tcp.readLine(signal)).toMatch(/^INFO /);
  let sid = 0;
  const confirmed = async () => {
    tcp.write('PING\r\n');
    expect(await tcp.readLine(signal)).toBe('PONG');
  };
  return {
    tcp,
    async subscribe(subject: string) {
      tcp.write(`CONNECT {"verbose":false}\r\nSUB ${subject} ${++sid}\r\n`);
      await confirmed();
    },
    publish(subject: string, payload: string, replyTo = '') {
      tcp.write(`PUB ${subject} ${replyTo} ${Buffer.byteLength(payload)}\r\n${payload}\r\n`);
    },
    /** The next message: its reply subject and payload. */
    async next(): Promise<{ replyTo: string | undefined; payload: string }> {
      const head = (await tcp.readLine(signal)).split(' ');
      const payload = await tcp.readLine(signal);
      return { replyTo: head.length === 5 ? head[3] : undefined, payload };
    },
  };
}

const config = () => BusConfigSchema.parse({ servers: [nats.url], cluster: 'bustest', requestTimeoutMs: 300 });

describe('bus', () => {
  it('answers commands on per-host subjects, and refusals carry their catalogue code', async () => {
    await using agent = await Bus.connect(config(), 'agent host-a');
    await using coordinator = await Bus.connect(config(), 'coordinator');
    const subject = agent.subjects.agent('host-a', 'prepare');
    expect(subject).toBe('baton.bustest.agent.host-a.prepare');
    agent.serve(agent.subjects.agent('host-a', '*'), async (params, subj) => {
      const p = params as { token: number };
      if (p.token < 5) throw new BatonError('STALE_TOKEN', `token ${p.token} is stale`, { details: { current: 5 } });
      return { subject: subj, token: p.token };
    });
    await waitFor(async () => (await coordinator.request(subject, { token: 5 }).catch(() => false)) !== false, { what: 'the subscription', deadlineMs: 2000, intervalMs: 20 });
    expect(await coordinator.request(subject, { token: 7 })).toEqual({ subject, token: 7 });
    const stale = await coordinator.request(subject, { token: 3 }).catch(asBatonError);
    expect(stale).toMatchObject({ code: 'STALE_TOKEN', details: { current: 5 } });
    const nobody = await coordinator.request(coordinator.subjects.agent('host-z', 'prepare'), {}).catch(asBatonError);
    expect(nobody).toMatchObject({ code: 'UNAVAILABLE' });
  });

  it('takes a reply it cannot read for no answer (the peer may have acted), never for a refusal', async () => {
    await using coordinator = await Bus.connect(config(), 'coordinator');
    const signal = AbortSignal.timeout(5000);
    const peer = await rawNats(nats.port, signal);
    await using _tcp = peer.tcp;
    const subject = coordinator.subjects.agent('host-r', 'migration.resume');
    await peer.subscribe(subject);
    const asked = coordinator.request(subject, { token: 1 }).catch(asBatonError);
    const { replyTo, payload } = await peer.next();
    expect(JSON.parse(payload)).toMatchObject({ params: { token: 1 } });
    peer.publish(replyTo!, 'not json');
    expect(await asked).toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining('malformed reply') });
  });

  it('refuses a command it cannot read before its handler, and says so to onRefused', async () => {
    await using agent = await Bus.connect(config(), 'agent host-v');
    const subject = agent.subjects.agent('host-v', 'migration.resume');
    const refusals: string[] = [];
    let handled = 0;
    agent.serve(subject, () => ++handled, (err) => refusals.push(err.code));
    await using coordinator = await Bus.connect(config(), 'coordinator');
    await waitFor(async () => (await coordinator.request(subject, {}).catch(() => false)) !== false, { what: 'the subscription', deadlineMs: 2000, intervalMs: 20 });
    const handledBefore = handled;
    const signal = AbortSignal.timeout(5000);
    const peer = await rawNats(nats.port, signal);
    await using _tcp = peer.tcp;
    await peer.subscribe('raw.inbox');
    peer.publish(subject, JSON.stringify({ v: 99, params: {} }), 'raw.inbox');
    const answer = JSON.parse((await peer.next()).payload) as unknown;
    expect(answer).toMatchObject({ ok: false, error: { code: 'UNSUPPORTED_VERSION' } });
    peer.publish(subject, 'not json', 'raw.inbox');
    expect(JSON.parse((await peer.next()).payload)).toMatchObject({ ok: false, error: { code: 'INVALID_REQUEST', message: `a command on ${subject} is not JSON` } });
    // A refusal names what is wrong, in one line, as on the socket (not a validator's dump).
    peer.publish(subject, JSON.stringify({ params: {} }), 'raw.inbox');
    expect(JSON.parse((await peer.next()).payload)).toMatchObject({ ok: false, error: { code: 'INVALID_REQUEST', message: expect.stringMatching(/^a command on \S+ has no envelope \{v, params\}: v: [^\n]+$/) } });
    expect(refusals).toEqual(['UNSUPPORTED_VERSION', 'INVALID_REQUEST', 'INVALID_REQUEST']);
    expect(handled).toBe(handledBefore);
  });

  it('keeps events in a JetStream stream', async () => {
    await using bus = await Bus.connect(config(), 'coordinator');
    await bus.ensureHistory('BATON_BUSTEST');
    await bus.ensureHistory('BATON_BUSTEST');
    await bus.record(bus.subjects.event('migration', 'm1'), { phase: 'done' });
    const bad = await bus.record('elsewhere.subject', {}).catch(asBatonError);
    expect(bad).toMatchObject({ code: 'UNAVAILABLE' });
  });
});
