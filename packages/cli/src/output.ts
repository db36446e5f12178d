import { exitCodeFor, toErrorBody } from '@baton/core';

/** Output for people (tables) or machines (`--json`); errors always carry their stable code. */
export interface OutputOptions {
  json?: boolean;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function printTable(rows: readonly Record<string, unknown>[], columns: readonly string[]): void {
  const cells = rows.map((r) => columns.map((c) => (r[c] === undefined || r[c] === null ? '-' : String(r[c]))));
  const header = columns.map((c) => c.toUpperCase());
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((row) => row[i]!.length)));
  const line = (row: string[]): string => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ');
  process.stdout.write([line(header), ...cells.map(line)].join('\n') + '\n');
}

/** Runs a command's body; a failure is printed with its code and sets its exit status, never thrown. */
export async function reporting(opts: OutputOptions, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    reportError(err, opts);
  }
}

/** Print an error the documented way and set the exit status its code maps to. */
function reportError(err: unknown, opts: OutputOptions): void {
  const body = toErrorBody(err);
  if (opts.json) printJson({ error: body });
  else process.stderr.write(`error ${body.code}: ${body.message}\n`);
  process.exitCode = exitCodeFor(body.code);
}
