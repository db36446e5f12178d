import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asBatonError, BatonError } from '@baton/core';
import { Bus, BusConfigSchema } from '@baton/bus';
import { NatsServer, waitFor } from '../support/index.js';

/** The NATS adapter against a real nats-server: commands, catalogue errors, events, history. */
let nats: NatsServer;
beforeAll(async () => {
  nats = await NatsServer.start({ jetstream: true });
});
afterAll(async () => {
  await nats?.close();
});

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

  it('keeps events in a JetStream stream', async () => {
    await using bus = await Bus.connect(config(), 'coordinator');
    await bus.ensureHistory('BATON_BUSTEST');
    await bus.ensureHistory('BATON_BUSTEST');
    await bus.record(bus.subjects.event('migration', 'm1'), { phase: 'done' });
    const bad = await bus.record('elsewhere.subject', {}).catch(asBatonError);
    expect(bad).toMatchObject({ code: 'UNAVAILABLE' });
  });
});
