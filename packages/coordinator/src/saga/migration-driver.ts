import { isClosedPhase, type MigrationRecord, type MonotonicClock, type VmDefinition } from '@baton/core';
import type { MigrationStore, StoredMigration } from '@baton/etcd';
import type { Log } from '../log.js';
import type { AgentSteps } from './agent-steps.js';
import { Drive } from './drive.js';
import type { EtcdSteps } from './etcd-steps.js';
import { MigrationSlots, type MigrationLimits } from './migration-slots.js';

/** What a drive uses of each collaborator (narrow, so a test can stand in for etcd and the agents). */
export interface MigrationDriverOptions {
  store: Pick<MigrationStore, 'saveThrough'>;
  etcd: Pick<EtcdSteps, 'run' | 'unanswered' | 'declaredFenced'>;
  agents: Pick<AgentSteps, 'run' | 'define'>;
  clock: MonotonicClock;
  log: Log;
  retryMs: number;
  limits: MigrationLimits;
  /** Every record saved, with the one it replaced (events, metrics). */
  onSaved(record: StoredMigration['record'], previous: StoredMigration['record']): void;
}

/**
 * Drives migration records to their end, as the leader: asks `nextStep` what a record waits for,
 * carries it out, feeds the reply through `decideReply` and `transition`, and saves the next
 * record by compare-on-revision. A record whose step is an etcd transaction is saved by that
 * transaction (it compares the last save's revision and puts the record), not by a write of its
 * own. A crash (or a lost leadership) loses only the step in flight: the next leader reads the
 * record and sends that step again. A definition change for a VM in flight is staged through the
 * driver (`stage`), the record's one writer, and applied once the record is closed (seed 002).
 */
export class MigrationDriver {
  /** Every record this replica drives, with its run: the one registry of migrations in flight here. */
  private readonly drives = new Map<string, { drive: Drive; run: Promise<StoredMigration> }>();
  private readonly slots: MigrationSlots;

  constructor(private readonly opts: MigrationDriverOptions) {
    this.slots = new MigrationSlots(opts.limits);
  }

  /** Migrations waiting for a slot (their records `begun`). */
  get queued(): number {
    return this.slots.queued;
  }

  /**
   * Resolves with the settled record as saved (closed, its staged definition applied); rejects if
   * `signal` aborts or another writer took the record (NOT_LEADER). Every command goes out after
   * the record that asks for it is saved (or with it, for etcd steps), except those in
   * OVERLAPS_SAVE, which need not wait for it. A record driven here already gets that run.
   */
  drive(initial: StoredMigration, signal: AbortSignal): Promise<StoredMigration> {
    const id = initial.record.id;
    const known = this.drives.get(id);
    if (known) return known.run;
    const slot = { take: (wait: AbortSignal) => this.admit(initial.record, wait), free: () => this.slots.release(id) };
    const drive = new Drive(initial, signal, this.opts, slot);
    const run = drive.run().finally(() => {
      this.slots.release(id);
      this.drives.delete(id);
    });
    this.drives.set(id, { drive, run });
    return run;
  }

  /**
   * A record that has taken no step yet waits for a slot; one under way (a new leader resuming
   * it) runs at once and counts against the limits; a closed one (its staged definition still to
   * apply) takes none.
   */
  private async admit(record: MigrationRecord, signal: AbortSignal): Promise<void> {
    const { id, source, destination } = record;
    if (isClosedPhase(record.phase)) return;
    if (record.phase !== 'begun') return this.slots.hold(id, { source, destination });
    const busy = this.slots.busy({ source, destination });
    if (busy !== undefined) this.opts.log.info({ migration: id, source, destination, queued: this.slots.queued + 1 }, `migration ${id} waits for a slot: ${busy}`);
    const since = this.opts.clock.now();
    await this.slots.acquire(id, { source, destination }, signal);
    if (busy !== undefined) this.opts.log.info({ migration: id, waitedMs: Math.round(this.opts.clock.now() - since) }, `migration ${id} starts after waiting for a slot`);
  }

  /** The run of a record this replica drives; undefined if it drives none with that id. */
  running(id: string): Promise<StoredMigration> | undefined {
    return this.drives.get(id)?.run;
  }

  /** Every run in flight here. */
  runs(): Promise<StoredMigration>[] {
    return [...this.drives.values()].map((d) => d.run);
  }

  /** The migration this replica drives for a VM, while anything is left to do for its record. */
  drivingFor(vm: string): string | undefined {
    return [...this.drives].find(([, d]) => d.drive.pendingVm === vm)?.[0];
  }

  /**
   * Cancel a migration this replica drives (Drive.cancel): resolves with the record saved with the
   * cancel (or as it stands, when it rolls back or has ended aborted anyway); undefined when no
   * such drive is here.
   */
  cancel(migration: string): Promise<MigrationRecord> | undefined {
    return this.drives.get(migration)?.drive.cancel();
  }

  /**
   * Stage a definition in a migration this replica drives; resolves once it is durably saved.
   * Undefined when there is nothing to stage into (no such drive here, or its record settled).
   */
  stage(migration: string, definition: VmDefinition): Promise<StoredMigration> | undefined {
    return this.drives.get(migration)?.drive.stage(definition);
  }
}
