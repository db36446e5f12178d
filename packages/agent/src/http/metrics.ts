import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** The agent's Prometheus metrics, on a registry of its own (never the global one). */
export class AgentMetrics {
  readonly registry = new Registry();
  readonly grants = new Counter({ name: 'baton_agent_grants_total', help: 'Acquire requests by result.', labelNames: ['result'] as const, registers: [this.registry] });
  readonly grantSeconds = new Histogram({
    name: 'baton_agent_grant_duration_seconds',
    help: 'Time to handle an acquire inside the agent (resolve, lock, token).',
    buckets: [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1],
    registers: [this.registry],
  });
  readonly releases = new Counter({ name: 'baton_agent_releases_total', help: 'Locks released, by reason.', labelNames: ['reason'] as const, registers: [this.registry] });
  readonly ownerSignals = new Counter({ name: 'baton_agent_owner_signals_total', help: 'Signals sent to owner processes whose connection dropped.', labelNames: ['signal'] as const, registers: [this.registry] });
  readonly locksHeld = new Gauge({ name: 'baton_agent_locks_held', help: 'Lock files held by this agent.', registers: [this.registry] });
  readonly owners = new Gauge({ name: 'baton_agent_owners', help: 'Registered owners.', registers: [this.registry] });
  readonly connections = new Gauge({ name: 'baton_agent_connections', help: 'Open client connections.', registers: [this.registry] });
  readonly generation = new Gauge({ name: 'baton_agent_generation', help: 'Re-execs since the agent process started.', registers: [this.registry] });
  readonly degraded = new Gauge({ name: 'baton_agent_degraded', help: '1 when inherited state was refused and the agent grants nothing.', registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'baton_agent_' });
  }
}
