// The migration section's shared pieces: its options and results, its constants, and the few
// helpers every part uses (one migration through the coordinator, a log that counts retries).
import { fileURLToPath } from 'node:url';
import { systemClock, type MigrationRecord } from '@baton/core';
import type { Coordinator, Log, MigrationLimits } from '@baton/coordinator';
import { MigrationCluster, within } from '../support/index.js';
import type { Summary } from './stats.js';
import type { PathCount, PathPhase } from './migration-path.js';

/** Where a storm that broke a rule leaves its evidence, a folder per storm (emptied at its start). */
export const DIAGNOSTICS_DIR = fileURLToPath(new URL('./migration-diagnostics/', import.meta.url));
/** QEMU's default maximum downtime at switchover (migrate_set_downtime / downtime-limit). */
export const QEMU_DOWNTIME_MS = 300;
/** The agents' and the coordinator's session TTL: the agent's default. */
export const TTL_SECONDS = 10;
/** The longest one migration may take before the bench gives up on it (the storm's share of two CPUs included). */
export const MIGRATION_DEADLINE_MS = 30_000;

export interface MigrationBenchOptions {
  hosts: number;
  /** Timed sequential migrations of the handoff VM. */
  handoffs: number;
  rounds: number;
  /** Timed iterations of the floor and of the Lock handoff, each. */
  floorIterations: number;
  storm: { vms: number; perVm: number };
}

export interface HandoffResult {
  migrations: number;
  /** Migrations with both events found in the logs. */
  measured: number;
  notDone: number;
  criticalPath: Summary;
  phases: Record<PathPhase, Summary>;
  path: PathCount;
  /** The most etcd writes and NATS messages any measured migration had inside its critical path. */
  most: { etcdWrites: number; busMessages: number };
  /** Every path seen, with how many migrations had it (one entry: every migration alike). */
  pathVariants: { steps: string; n: number }[];
  /** begun → done on the record's timeline. */
  whole: Summary;
  /** etcd's own counters over the timed migrations (all three members), per migration. */
  perMigration: { txn: number; range: number; proposals: number };
  /** S1/S2 on the handoff VM's disk at the end: undefined when they held, else what broke. */
  diskViolation?: string;
}

export interface StormResult {
  vms: number;
  perVm: number;
  hosts: number;
  migrations: number;
  done: number;
  /** From the first migration's start to the last chain's end (a stuck migration waits out its deadline). */
  seconds: number;
  /** From the first migration's start to the end of the last one that completed: the rate's denominator. */
  busySeconds: number;
  perSecond: number;
  maxInFlight: number;
  disksChecked: number;
  /** Every broken rule, in words; and how many of each kind. */
  violations: string[];
  broken: { failed: number; disks: number; copies: number; orphans: number };
  /** Steps the coordinator sent again (its warnings). */
  retries: number;
  whole: Summary;
  criticalPath: Summary;
  /** CPUs the machine used on average during the storm (all processes). */
  machineCpu: number;
  /** The coordinator's limits during the storm: how many of the migrations asked for ran at once. */
  limits: MigrationLimits;
  /** The product's default limits, or raised to the storm's size. */
  limitsKind: 'raised' | 'default';
}

export interface MigrationResults {
  etcdMembers: number;
  hosts: number;
  handoff?: HandoffResult;
  floor?: { total: Summary; txn: Summary; nats: Summary; range: Summary };
  lock?: { handoff: Summary; free: Summary };
  /** The storm (every migration asked for runs at once), then the same with the default limits. */
  storms: StormResult[];
}

/** A coordinator warning or error, kept for the storm's diagnostics. */
export interface Warning {
  atMs: number;
  fields: object;
  message: string;
}

/** A coordinator log that counts the steps sent again and keeps its warnings for the diagnostics. */
export function countingLog(): { log: Log; retries: () => number; warnings: Warning[] } {
  let retries = 0;
  const warnings: Warning[] = [];
  const keep = (fields: object, message: string): void => {
    if (warnings.length < 10_000) warnings.push({ atMs: systemClock.now(), fields, message });
  };
  return {
    log: {
      debug: () => undefined,
      info: () => undefined,
      warn: (f, m) => {
        if (m.includes('sending it again')) retries++;
        keep(f, m);
      },
      error: keep,
    },
    retries: () => retries,
    warnings,
  };
}

/** Start a migration on the leader and wait, bounded, for its record to close. */
export async function migrateOnce(mc: MigrationCluster, c: Coordinator, vm: string, to: string): Promise<MigrationRecord> {
  const begun = await c.migrate({ vm, to });
  // The leader's own drive of the record: resolves when it closes, without polling etcd.
  const closed = await within(c.settled(begun.id), MIGRATION_DEADLINE_MS, `migration ${begun.id}`);
  return closed ?? mc.settled(begun.id, MIGRATION_DEADLINE_MS);
}

export const wholeUs = (r: MigrationRecord): number => (r.timeline.at(-1)!.atMs - r.timeline[0]!.atMs) * 1000;

