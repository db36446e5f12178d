// Sampling and percentiles for the benchmark. Every latency is one iteration timed on its own with
// process.hrtime.bigint(), in microseconds; percentiles are nearest-rank over the sorted samples.

/** Microseconds since an arbitrary origin, with nanosecond resolution. */
export function nowUs(): number {
  return Number(process.hrtime.bigint()) / 1000;
}

export interface Summary {
  n: number;
  p50: number;
  p99: number;
  min: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentile of ascending `sorted` (p in 0..100). */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export function summarize(samples: readonly number[] | Float64Array): Summary {
  const sorted = Float64Array.from(samples).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    min: sorted[0] ?? Number.NaN,
    max: sorted[sorted.length - 1] ?? Number.NaN,
    mean: sorted.length === 0 ? Number.NaN : sum / sorted.length,
  };
}

/** A growable store of samples under a few named series (an iteration may yield several). */
export class Samples {
  private readonly series = new Map<string, number[]>();

  add(name: string, us: number): void {
    let s = this.series.get(name);
    if (!s) this.series.set(name, (s = []));
    s.push(us);
  }

  get(name: string): number[] {
    return this.series.get(name) ?? [];
  }

  summary(name: string): Summary {
    return summarize(this.get(name));
  }
}

/**
 * One benchmark loop: `iteration(record)` runs one sequential iteration and records what it
 * timed; during warm-up `record` is a no-op.
 */
export interface Loop {
  name: string;
  iteration(record: (series: string, us: number) => void): Promise<void>;
}

const ignore = (): void => {};

/**
 * Run several loops interleaved: every round runs each loop for n/rounds recorded iterations
 * (after a short per-chunk warm-up), so drift on the machine during the run (another process, a
 * CPU frequency change) touches every series alike and a ratio between them stays fair.
 */
export async function runInterleaved(loops: readonly Loop[], opts: { n: number; rounds: number; warmup: number; chunkWarmup: number }, samples: Samples): Promise<void> {
  for (const loop of loops) for (let i = 0; i < opts.warmup; i++) await loop.iteration(ignore);
  const perRound = Math.ceil(opts.n / opts.rounds);
  const record = (series: string, us: number): void => samples.add(series, us);
  for (let r = 0; r < opts.rounds; r++) {
    for (const loop of loops) {
      for (let i = 0; i < opts.chunkWarmup; i++) await loop.iteration(ignore);
      for (let i = 0; i < perRound; i++) await loop.iteration(record);
    }
  }
}
