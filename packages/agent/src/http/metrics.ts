import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** What the gauges report, read when /metrics is scraped rather than kept up to date on every request. */
export interface AgentGaugeSource {
  locksHeld(): number;
  owners(): number;
  connections(): number;
  generation(): number;
  degraded(): boolean;
  /** Milliseconds left before the cluster session's fence deadline; absent without a cluster. */
  sessionLeftMs(): number | undefined;
}

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
  readonly fences = new Counter({ name: 'baton_agent_fences_total', help: 'Times the cluster session was lost on this host and its owners fenced.', registers: [this.registry] });
  readonly ownerSignals = new Counter({ name: 'baton_agent_owner_signals_total', help: 'Signals sent to owner processes whose connection dropped.', labelNames: ['signal'] as const, registers: [this.registry] });

  constructor(source: AgentGaugeSource) {
    const gauges: [string, string, () => number][] = [
      ['baton_agent_locks_held', 'Lock files held by this agent.', () => source.locksHeld()],
      ['baton_agent_owners', 'Registered owners.', () => source.owners()],
      ['baton_agent_connections', 'Open client connections.', () => source.connections()],
      ['baton_agent_generation', 'Re-execs since the agent process started.', () => source.generation()],
      ['baton_agent_degraded', '1 when inherited state was refused and the agent grants nothing.', () => (source.degraded() ? 1 : 0)],
      ['baton_agent_session_left_seconds', 'Seconds before the cluster session would be fenced without another keepalive (-1: no cluster).', () => (source.sessionLeftMs() ?? -1000) / 1000],
    ];
    for (const [name, help, read] of gauges) {
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read());
        },
      });
    }
    collectDefaultMetrics({ register: this.registry, prefix: 'baton_agent_' });
  }
}
