import { setTimeout as delay } from 'node:timers/promises';
import { raceAbort } from '@baton/core';

/** The default poll interval: short, because every wait here is on loopback. */
export const DEFAULT_INTERVAL_MS = 25;
/** The default bound on a single probe, so a probe of a SIGSTOPped server cannot eat the deadline. */
export const DEFAULT_ATTEMPT_TIMEOUT_MS = 1_000;

interface WaitForBase {
  /** What is awaited, in words; it names the wait in the timeout error. */
  what: string;
  /** @default DEFAULT_INTERVAL_MS */
  intervalMs?: number;
  /** Each probe gets a signal that aborts after this long. @default DEFAULT_ATTEMPT_TIMEOUT_MS */
  attemptTimeoutMs?: number;
}

/** Every wait is bounded: by a deadline, a signal, or both. */
export type WaitForOptions = WaitForBase &
  ({ deadlineMs: number; signal?: AbortSignal } | { signal: AbortSignal; deadlineMs?: number });

/** A wait that ran out of time; `cause` is the last probe's error. */
export class WaitTimeoutError extends Error {
  override readonly name = 'WaitTimeoutError';
  readonly what: string;
  readonly attempts: number;
  constructor(what: string, elapsedMs: number, attempts: number, lastError: unknown) {
    const last = lastError === undefined ? 'none (the probe never finished)' : describe(lastError);
    super(`timed out after ${elapsedMs} ms waiting for ${what} (${attempts} probes); last probe error: ${last}`, {
      cause: lastError,
    });
    this.what = what;
    this.attempts = attempts;
  }
}

export function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === undefined ? error.message : `${error.message} [${code}]`;
  }
  return String(error);
}

/** A probe fails by throwing or by returning `false`; any other value ends the wait. */
export type Probe<T> = (signal: AbortSignal) => Promise<T | false> | T | false;

/**
 * Polls `probe` until it succeeds and returns its value. Readiness is always proven by a probe:
 * never sleep and hope. Throws {@link WaitTimeoutError} at the deadline, or the signal's reason
 * (wrapped, naming the wait) when the caller's signal aborts first.
 */
export async function waitFor<T>(probe: Probe<T>, options: WaitForOptions): Promise<Exclude<T, false>> {
  const started = performance.now();
  const intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
  const attemptTimeoutMs = options.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS;
  const deadline = options.deadlineMs === undefined ? undefined : AbortSignal.timeout(Math.ceil(options.deadlineMs));
  const outer = options.signal;
  const overall = AbortSignal.any([deadline, outer].filter((s): s is AbortSignal => s !== undefined));
  let attempts = 0;
  let lastError: unknown;

  const failure = (): Error => {
    if (outer?.aborted === true) {
      return new Error(`gave up waiting for ${options.what}: ${describe(outer.reason)}`, { cause: outer.reason });
    }
    return new WaitTimeoutError(options.what, Math.round(performance.now() - started), attempts, lastError);
  };

  while (!overall.aborted) {
    attempts++;
    const attempt = AbortSignal.any([overall, AbortSignal.timeout(attemptTimeoutMs)]);
    try {
      const value = await raceAbort(Promise.resolve().then(() => probe(attempt)), attempt);
      if (value !== false) return value as Exclude<T, false>;
      lastError = new Error('probe returned false');
    } catch (error) {
      // A probe cut short by our own deadline says nothing new; keep the previous probe's error.
      if (overall.aborted) break;
      lastError = attempt.aborted ? new Error(`probe gave no answer within ${attemptTimeoutMs} ms`) : error;
    }
    try {
      await delay(intervalMs, undefined, { signal: overall });
    } catch {
      break;
    }
  }
  throw failure();
}

/** `promise`, or a rejection naming `what` after `deadlineMs`: for waits that are not polls (a teardown, a settle). */
export async function within<T>(promise: Promise<T>, deadlineMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no end within ${deadlineMs} ms`)), deadlineMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
