import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { isClosedPhase, type MigrationRecord } from '@baton/core';

/** The coordinator's Prometheus metrics. */
export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly leader = new Gauge({ name: 'baton_coordinator_leader', help: '1 while this replica leads', registers: [this.registry] });
  readonly migrations = new Counter({ name: 'baton_migrations_total', help: 'Migrations ended, by outcome', labelNames: ['outcome'], registers: [this.registry] });
  readonly duration = new Histogram({
    name: 'baton_migration_seconds',
    help: 'Migrations from begun to their end, as driven by one leader',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly handoff = new Histogram({
    name: 'baton_handoff_seconds',
    help: 'From the state sent (source paused) to the destination running: commit and resume',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1],
    registers: [this.registry],
  });

  readonly queued: Gauge;

  /** `queued`: migrations waiting for a slot on this replica (the leader), read at each scrape. */
  constructor(queued: () => number) {
    this.queued = new Gauge({
      name: 'baton_migrations_queued',
      help: 'Migrations accepted and waiting for a slot (per-host and cluster limits), their records begun',
      registers: [this.registry],
      collect() {
        this.set(queued());
      },
    });
  }

  /** A record was saved: counted when it reaches its end. */
  saved(record: MigrationRecord, previous: MigrationRecord | undefined): void {
    if (!isClosedPhase(record.phase) || (previous !== undefined && isClosedPhase(previous.phase))) return;
    this.migrations.inc({ outcome: record.phase });
    this.duration.observe((record.timeline.at(-1)!.atMs - record.timeline[0]!.atMs) / 1000);
    const window = handoffWindowMs(record);
    if (window !== undefined) this.handoff.observe(window / 1000);
  }
}

/** sent → confirming on the record's timeline: the commit transaction and the destination's resume. */
export function handoffWindowMs(record: MigrationRecord): number | undefined {
  const sent = record.timeline.find((e) => e.phase === 'sent');
  const running = record.timeline.find((e) => e.phase === 'confirming');
  return sent && running ? running.atMs - sent.atMs : undefined;
}
