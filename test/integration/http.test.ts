import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { httpText } from '../support/agent-io.js';
import { AgentProcess, httpJson, SharedStorage } from '../support/index.js';

/** The agent's HTTP port, as a supervisor's probes and a Prometheus scraper use it. */
describe('agent HTTP endpoints', () => {
  /** One sample's value from a Prometheus text exposition, or undefined if the series is absent. */
  function sample(metrics: string, series: string): number | undefined {
    const line = metrics.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  }

  it('answers /livez and /readyz with 200 while serving, on the port hello reports', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const c = await agent.client();
    const { httpPort } = await c.request('hello');
    // Configured as port 0: a real port was picked and is reported.
    expect(httpPort).toBeGreaterThan(0);
    const base = `http://127.0.0.1:${httpPort}`;

    expect(await httpJson(`${base}/livez`)).toEqual({ status: 200, body: { status: 'ok' } });
    expect(await httpJson(`${base}/readyz`)).toEqual({ status: 200, body: { status: 'ready' } });
  });

  it('exports locks held and grants by result in /metrics', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const disk = storage.image('vm.img');
    const vm = await agent.client();
    await vm.request('register', { owner: { uuid: randomUUID(), name: 'vm' } });
    const intruder = await agent.client();
    await intruder.request('register', { owner: { uuid: randomUUID(), name: 'intruder' } });
    const { httpPort } = await vm.request('hello');
    const metrics = async (): Promise<string> => {
      const r = await httpText(`http://127.0.0.1:${httpPort}/metrics`);
      expect(r.status).toBe(200);
      return r.body;
    };

    const before = await metrics();
    expect(sample(before, 'baton_agent_locks_held')).toBe(0);
    expect(sample(before, 'baton_agent_grants_total{result="busy"}') ?? 0).toBe(0);

    await vm.request('acquire', { resources: [{ name: disk }] });
    const granted = await metrics();
    expect(granted).toMatch(/^baton_agent_locks_held 1$/m);
    expect(sample(granted, 'baton_agent_grants_total{result="granted"}')).toBe(1);

    await expect(intruder.request('acquire', { resources: [{ name: disk }] })).rejects.toMatchObject({ code: 'RESOURCE_BUSY' });
    const refused = await metrics();
    expect(refused).toMatch(/^baton_agent_grants_total\{result="busy"\} 1$/m);
    // A refusal holds nothing more and grants nothing more.
    expect(sample(refused, 'baton_agent_locks_held')).toBe(1);
    expect(sample(refused, 'baton_agent_grants_total{result="granted"}')).toBe(1);

    await vm.request('release', {});
    expect(sample(await metrics(), 'baton_agent_locks_held')).toBe(0);
  });
});
