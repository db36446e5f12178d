// Grants per second with many requests in flight: `connections` connections (one registered
// owner each), `perConnection` workers pipelining on each. A worker acquires its own resource,
// releases it, and starts again, so every grant costs the agent two requests.
import { randomUUID } from 'node:crypto';
import { PROTOCOL_VERSION } from '@baton/core';
import type { BenchAgent } from './agent-host.js';
import { LineClient } from './line-client.js';
import { cpuSeconds } from './sys.js';

export interface ThroughputResult {
  connections: number;
  inFlight: number;
  seconds: number;
  grants: number;
  grantsPerSecond: number;
  requestsPerSecond: number;
  errors: number;
  /** The agent's CPU use during the run, in CPUs (1.0 = one core busy all the time). */
  agentCpu: number;
  /** The bench process's (the clients') CPU use. */
  clientCpu: number;
}

export async function measureThroughput(agent: BenchAgent, opts: { connections: number; perConnection: number; seconds: number }): Promise<ThroughputResult> {
  const clients: LineClient[] = [];
  try {
    for (let c = 0; c < opts.connections; c++) {
      const client = await LineClient.connect(agent.socketPath);
      clients.push(client);
      const reply = await client.call(JSON.stringify({ v: PROTOCOL_VERSION, id: 0, method: 'register', params: { owner: { uuid: randomUUID(), name: `tp-${c}` } } }));
      if (reply['ok'] !== true) throw new Error(`register failed: ${JSON.stringify(reply)}`);
    }
    let grants = 0;
    let errors = 0;
    let running = true;
    const worker = async (client: LineClient, name: string): Promise<void> => {
      const acquire = JSON.stringify({ v: PROTOCOL_VERSION, id: 1, method: 'acquire', params: { resources: [{ name }] } });
      const release = JSON.stringify({ v: PROTOCOL_VERSION, id: 2, method: 'release', params: { resources: [{ name }] } });
      while (running) {
        const a = await client.call(acquire);
        if (a['ok'] !== true) {
          errors++;
          continue;
        }
        await client.call(release);
        grants++;
      }
    };
    // A short warm-up run first, then the timed run.
    const run = async (seconds: number): Promise<void> => {
      running = true;
      const workers = clients.flatMap((client, c) => Array.from({ length: opts.perConnection }, (_, w) => worker(client, `tp-disk-${c}-${w}`)));
      await new Promise((r) => setTimeout(r, seconds * 1000));
      running = false;
      await Promise.all(workers);
    };
    await run(Math.min(0.5, opts.seconds / 4));
    grants = 0;
    errors = 0;
    const agentCpu0 = cpuSeconds(agent.pid);
    const clientCpu0 = process.cpuUsage();
    const t0 = performance.now();
    await run(opts.seconds);
    const seconds = (performance.now() - t0) / 1000;
    const clientCpu = process.cpuUsage(clientCpu0);
    return {
      connections: opts.connections,
      inFlight: opts.connections * opts.perConnection,
      seconds,
      grants,
      grantsPerSecond: grants / seconds,
      requestsPerSecond: (2 * grants) / seconds,
      errors,
      agentCpu: (cpuSeconds(agent.pid) - agentCpu0) / seconds,
      clientCpu: (clientCpu.user + clientCpu.system) / 1e6 / seconds,
    };
  } finally {
    await Promise.allSettled(clients.map((c) => c.close()));
  }
}
