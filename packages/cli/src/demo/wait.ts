import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '@baton/agent';
import { raceAbort } from '@baton/core';

/**
 * Ask `probe` every 20 ms until it answers something other than false, or the signal aborts.
 * A probe that throws is asked again: the thing it asks about is not there yet. The probe gets
 * the signal for its own waits, and one that does not answer is not waited for past it. At the
 * deadline the last thing the probe threw, if anything, is the failure's cause.
 */
export async function until<T>(probe: (signal: AbortSignal) => Promise<T | false>, signal: AbortSignal): Promise<T> {
  let last: unknown;
  while (!signal.aborted) {
    try {
      const answer = await raceAbort(probe(signal), signal);
      if (answer !== false) return answer;
    } catch (err) {
      last = err; // not yet
    }
    await sleep(20, undefined, { signal }).catch(() => undefined);
  }
  // The deadline's reason, not the timer's AbortError, is what the operator needs to read.
  const reason = signal.reason as Error;
  throw last === undefined || last === reason ? reason : new Error(`${reason.message}; the last attempt: ${(last as Error).message ?? String(last)}`, { cause: last });
}

/** The agent is not listening while it starts, nor for a few milliseconds of each re-exec. */
export function connectWhenUp(socketPath: string, signal: AbortSignal): Promise<AgentClient> {
  return until((s) => AgentClient.connect({ socketPath, signal: s }), signal);
}

export function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

export function step(n: number, text: string): void {
  say(process.stdout.isTTY ? `\n\x1b[1m${n}. ${text}\x1b[0m` : `\n${n}. ${text}`);
}
