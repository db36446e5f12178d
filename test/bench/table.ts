// The benchmark's one table: a row per measured line, plain text, aligned.
import type { Summary } from './stats.js';

export interface Check {
  what: string;
  value: number;
  limit: number;
  pass: boolean;
}

export interface Row {
  name: string;
  /** Samples (latency rows), locks, runs or grants. */
  n?: number;
  /** Microseconds. */
  p50?: number;
  p99?: number;
  /** A figure that is not a latency (B/lock, grants/s). */
  value?: string;
  /** Against the floor or the peer measured in the same run. */
  ratio?: string;
  target?: string;
  result?: 'PASS' | 'MISS';
  checks?: Check[];
}

function us(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return '';
  if (v >= 10_000) return Math.round(v).toLocaleString('en-US');
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

export function formatTable(rows: readonly Row[]): string {
  const header = ['name', 'n', 'p50 µs', 'p99 µs', 'value', 'ratio (p50)', 'target', 'result'];
  const cells = rows.map((r) => [r.name, r.n === undefined ? '' : r.n.toLocaleString('en-US'), us(r.p50), us(r.p99), r.value ?? '', r.ratio ?? '', r.target ?? '', r.result === 'MISS' ? '** MISS **' : (r.result ?? '')]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const right = new Set([1, 2, 3]);
  const line = (c: string[]): string => c.map((v, i) => (right.has(i) ? v.padStart(widths[i]!) : v.padEnd(widths[i]!))).join(' | ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...cells.map(line)].join('\n');
}

/** The same table as Markdown, for docs/benchmarks.md. */
export function formatMarkdown(rows: readonly Row[]): string {
  const header = ['name', 'n', 'p50 µs', 'p99 µs', 'value', 'ratio (p50)', 'target', 'result'];
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const body = rows.map((r) => `| ${[r.name, r.n === undefined ? '' : r.n.toLocaleString('en-US'), us(r.p50), us(r.p99), r.value ?? '', r.ratio ?? '', r.target ?? '', r.result === 'MISS' ? '**MISS**' : (r.result ?? '')].map(esc).join(' | ')} |`);
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => ([1, 2, 3].includes(i) ? '---:' : '---')).join('|')}|`, ...body].join('\n');
}

/** `a` as a multiple of `b`, as every ratio column prints it: `1.23×`. */
export const times = (a: number, b: number): string => `${(a / b).toFixed(2)}×`;

/** A latency line from a summary: n, p50 and p99, and whatever else the line says. */
export function latencyRow(name: string, s: Summary, extra: Partial<Row> = {}): Row {
  return { name, n: s.n, p50: s.p50, p99: s.p99, ...extra };
}

/** How a section reports its progress: `what` is logged, timed, and its failure recorded. */
export type Step = (what: string, fn: () => Promise<void>) => Promise<void>;
