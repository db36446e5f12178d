import { BatonError, formatMs, migrationRule, stepsLeft, type ErrorCode, type MigrationRecord, type TimelineEntry } from '@baton/core';
import { handoffWindowMs } from '@baton/coordinator';
import { printTable } from './output.js';

/**
 * How migration records read for people. Timeline times are the leader's monotonic clock, so
 * they are shown relative to the record's own `begun` entry, never as a time of day.
 */

const TIMELINE_COLUMNS = ['phase', 'at', 'step', 'error'] as const;

function sinceBegun(record: MigrationRecord, entry: TimelineEntry): number {
  return entry.atMs - record.timeline[0]!.atMs;
}

/** `  performing   +12.3 ms`, with the error code when a failure led into the phase. */
export function progressLine(record: MigrationRecord, entry: TimelineEntry): string {
  const line = `  ${entry.phase.padEnd(11)} +${formatMs(sinceBegun(record, entry))}`;
  return entry.error === undefined ? line : `${line}  ${entry.error}`;
}

/**
 * `[██████████░░░░░░] 5/7 sent        +41.2 ms`: the steps taken out of those the migration takes
 * if the rest succeed, so an abort redraws the bar to its own (shorter) end rather than jumping
 * back. What `baton migrate` draws on a terminal, in place, as `virsh migrate --verbose` does.
 */
export function progressBar(record: MigrationRecord, width = 24): string {
  const taken = record.timeline.length - 1;
  const total = taken + stepsLeft(record.phase);
  const filled = total === 0 ? width : Math.round((taken / total) * width);
  const entry = record.timeline.at(-1)!;
  const line = `[${'█'.repeat(filled)}${'░'.repeat(width - filled)}] ${taken}/${total} ${entry.phase.padEnd(10)} +${formatMs(sinceBegun(record, entry))}`;
  return entry.error === undefined ? line : `${line}  ${entry.error}`;
}

export function migrationHeader(record: MigrationRecord): string {
  return `migration ${record.id}: VM ${record.vm.name} (${record.vm.uuid}) ${record.source} → ${record.destination}`;
}

/** The timeline as a table (since begun, and how long each step took) and the handoff window. */
export function printTimeline(record: MigrationRecord): void {
  printTable(
    record.timeline.map((e, i) => ({
      phase: e.phase,
      at: `+${formatMs(sinceBegun(record, e))}`,
      step: i === 0 ? undefined : formatMs(e.atMs - record.timeline[i - 1]!.atMs),
      error: e.error,
    })),
    TIMELINE_COLUMNS,
  );
  const window = handoffWindowMs(record);
  process.stdout.write(
    window === undefined
      ? 'handoff window: none (the destination never took over)\n'
      : `handoff window: ${formatMs(window)} (sent → confirming: the commit transaction and the destination's resume)\n`,
  );
}

/**
 * Why an aborted migration aborted: the failure that led into the abort path (the first entry
 * that carries an error) and the step that failed (the rule of the phase before it).
 */
export function abortCause(record: MigrationRecord): { code: ErrorCode; step: string } {
  const i = record.timeline.findIndex((e) => e.error !== undefined);
  if (i < 0) return { code: 'INTERNAL', step: 'unknown' };
  const before = i > 0 ? migrationRule(record.timeline[i - 1]!.phase) : undefined;
  return { code: record.timeline[i]!.error!, step: before?.step ?? 'unknown' };
}

/** An aborted migration as the error the CLI reports: the code of the failure that caused it. */
export function abortError(record: MigrationRecord): BatonError {
  const { code, step } = abortCause(record);
  const why = code === 'MIGRATION_CANCELLED' ? `cancelled by an operator at ${step}` : `${step} failed with ${code}`;
  return new BatonError(code, `migration ${record.id} aborted: ${why}; VM ${record.vm.name} stays on ${record.source}`, {
    details: { migration: record.id, step, vm: record.vm.uuid, host: record.source },
  });
}
