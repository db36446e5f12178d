import type { Command } from 'commander';
import { BatonError, exitCodeFor, MIGRATION_COLUMNS, migrationRows, type MigrationRecord } from '@baton/core';
import { CoordinatorClient, DEFAULT_COORDINATOR_URL, FOLLOW_TIMEOUT_MS, type CoordinatorStatus } from '../coordinator-client.js';
import { abortCause, abortError, migrationHeader, printTimeline, progressBar, progressLine } from '../migration-view.js';
import { printJson, printTable, reporting } from '../output.js';

export interface CoordinatorOpts {
  coordinator?: string;
  json?: boolean;
}

/** The options every command that talks to a coordinator takes. */
export function coordinatorOptions(cmd: Command): Command {
  return cmd
    .option('--coordinator <url>', `a coordinator replica’s HTTP address (default: BATON_COORDINATOR_URL, else ${DEFAULT_COORDINATOR_URL})`)
    .option('--json', 'machine-readable output');
}

interface MigrateOpts extends CoordinatorOpts {
  to: string;
  wait: boolean;
  timeout?: string;
}

function seconds(text: string | undefined, fallbackMs: number): number {
  if (text === undefined) return fallbackMs;
  const s = Number(text);
  if (!Number.isFinite(s) || s <= 0) throw new BatonError('INVALID_REQUEST', `--timeout must be a positive number of seconds, not "${text}"`, { details: { timeout: text } });
  return s * 1000;
}

async function migrate(vm: string, opts: MigrateOpts): Promise<void> {
  const client = CoordinatorClient.from(opts);
  const followMs = seconds(opts.timeout, FOLLOW_TIMEOUT_MS);
  const accepted = await client.migrate(vm, opts.to);
  if (!opts.wait) {
    if (opts.json) printJson(accepted);
    else process.stdout.write(`${migrationHeader(accepted)}\nstarted; follow it with: baton migrations ${accepted.id}\n`);
    return;
  }
  if (!opts.json) process.stdout.write(migrationHeader(accepted) + '\n');
  const settled = await followToEnd(client, accepted, opts, followMs);
  if (settled.phase !== 'aborted') {
    if (!opts.json) process.stdout.write(`VM ${settled.vm.name} runs on ${settled.destination}\n`);
    return;
  }
  // With --json the record is the output either way; the exit status still says how it ended.
  if (opts.json) process.exitCode = exitCodeFor(abortCause(settled).code);
  else throw abortError(settled);
}

/**
 * A migration followed until it is settled: its progress (a bar on a terminal, a line per phase
 * elsewhere), then its timeline; with --json, the record.
 */
async function followToEnd(client: CoordinatorClient, from: MigrationRecord, opts: CoordinatorOpts, followMs: number): Promise<MigrationRecord> {
  const progress = opts.json ? undefined : process.stdout.isTTY ? terminalBar() : phaseLines();
  progress?.show(from);
  let settled: MigrationRecord;
  try {
    settled = await client.follow(from.id, (record) => progress?.show(record), followMs);
  } finally {
    progress?.end();
  }
  if (opts.json) {
    printJson(settled);
    return settled;
  }
  process.stdout.write('\n');
  printTimeline(settled);
  return settled;
}

interface CancelOpts extends CoordinatorOpts {
  wait: boolean;
  timeout?: string;
}

/** `baton cancel`: the migration rolls back, and the command follows it until it has (exit 0 once aborted). */
async function cancel(id: string, opts: CancelOpts): Promise<void> {
  const client = CoordinatorClient.from(opts);
  const followMs = seconds(opts.timeout, FOLLOW_TIMEOUT_MS);
  const taken = await client.cancel(id);
  if (!opts.wait) {
    if (opts.json) printJson(taken);
    else process.stdout.write(`${migrationHeader(taken)}\n${taken.phase === 'aborted' ? 'aborted' : 'rolling back'}; follow it with: baton migrations ${taken.id}\n`);
    return;
  }
  if (!opts.json) process.stdout.write(`${migrationHeader(taken)}\ncancelled: it rolls back, and ${taken.vm.name} stays on ${taken.source}\n`);
  const settled = await followToEnd(client, taken, opts, followMs);
  if (!opts.json) process.stdout.write(`VM ${settled.vm.name} runs on ${settled.source}\n`);
}

interface Progress {
  show(record: MigrationRecord): void;
  end(): void;
}

/**
 * On a terminal: one bar, redrawn in place; clipped to the width, since a wrapped line cannot be
 * redrawn. A version older than the one drawn (a stream opened again on another replica starts
 * from what that one has) leaves the bar as it is.
 */
function terminalBar(): Progress {
  let drawn = 0;
  return {
    show(record) {
      if (record.timeline.length < drawn) return;
      drawn = record.timeline.length;
      const columns = process.stdout.columns > 1 ? process.stdout.columns - 1 : 80;
      process.stdout.write(`\r\x1b[2K${progressBar(record).slice(0, columns)}`);
    },
    end() {
      if (drawn > 0) process.stdout.write('\n');
    },
  };
}

/** Into a pipe or a log: each timeline entry once, on its own line, as it first appears in any version of the record. */
function phaseLines(): Progress {
  let shown = 0;
  return {
    show(record) {
      for (const entry of record.timeline.slice(shown)) process.stdout.write(progressLine(record, entry) + '\n');
      shown = Math.max(shown, record.timeline.length);
    },
    end() {},
  };
}

function printStatus(status: CoordinatorStatus): void {
  const leader = status.leader === null ? 'none (an election is under way)' : `${status.leader.id} at ${status.leader.url}`;
  const lines = [
    `leader:     ${leader}`,
    `replicas:   ${status.replicas.map((r) => `${r.id} (${r.url})`).join(', ') || 'none'}`,
    `answered:   ${status.replica.id} (${status.replica.leader ? 'leader' : 'follower'})`,
    `hosts:      ${[...status.hosts].sort((a, b) => a.host.localeCompare(b.host)).map((h) => (h.ttlLeftSeconds < 0 ? `${h.host} (session expired)` : h.host)).join(', ') || 'none'}`,
    `open:       ${status.open.length} migration(s)`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
  if (status.open.length > 0) printTable(migrationRows(status.open), MIGRATION_COLUMNS);
}

/** `baton migrate`, `baton cancel`, `baton migrations`, `baton status`: the coordinator's view, over its HTTP API. */
export function registerMigrationCommands(program: Command): void {
  coordinatorOptions(program.command('migrate <vm>'))
    .description('live-migrate a VM (uuid or name): its disk leases go to --to without a gap or an overlap; on a terminal, a progress bar through the phases (elsewhere, one line per phase as it is reached), then the timeline')
    .requiredOption('--to <host>', 'the destination host')
    .option('--no-wait', 'return once the coordinator has taken the migration')
    .option('--timeout <seconds>', `how long to follow the migration (default ${FOLLOW_TIMEOUT_MS / 1000}); it goes on without the command`)
    .action(async (vm: string, opts: MigrateOpts) => {
      await reporting(opts, () => migrate(vm, opts));
    });

  coordinatorOptions(program.command('cancel <migration>'))
    .description('cancel a migration before its commit (as virsh domjobabort): it rolls back and the VM stays on its source, running; refused (MIGRATION_CONFLICT) once the VM may run on the destination. Follows the rollback to its end, then prints the timeline')
    .option('--no-wait', 'return once the coordinator has taken the cancel')
    .option('--timeout <seconds>', `how long to follow the rollback (default ${FOLLOW_TIMEOUT_MS / 1000}); it goes on without the command`)
    .action(async (id: string, opts: CancelOpts) => {
      await reporting(opts, () => cancel(id, opts));
    });

  coordinatorOptions(program.command('migrations [id]'))
    .description('every migration on record, oldest first; with ID, that one and its timeline')
    .action(async (id: string | undefined, opts: CoordinatorOpts) => {
      await reporting(opts, async () => {
        const client = CoordinatorClient.from(opts);
        if (id === undefined) {
          const all = await client.migrations();
          if (opts.json) printJson({ migrations: all });
          else printTable(migrationRows(all), MIGRATION_COLUMNS);
          return;
        }
        const record = await client.migration(id);
        if (opts.json) return printJson(record);
        process.stdout.write(`${migrationHeader(record)}\nphase: ${record.phase}\n`);
        if (record.phase === 'aborted') process.stdout.write(`cause: ${abortError(record).message}\n`);
        printTimeline(record);
      });
    });

  coordinatorOptions(program.command('status'))
    .description('the coordinators (leader, replicas), the live hosts and the open migrations')
    .action(async (opts: CoordinatorOpts) => {
      await reporting(opts, async () => {
        const status = await CoordinatorClient.from(opts).status();
        if (opts.json) printJson(status);
        else printStatus(status);
      });
    });
}
