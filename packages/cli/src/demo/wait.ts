import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '@baton/agent';

/**
 * Ask `probe` every 20 ms until it answers something other than false, or the signal aborts.
 * A probe that throws is asked again: the thing it asks about is not there yet. The probe gets
 * the signal for its own waits, and one that does not answer is not waited for past it.
 */
export async function until<T>(probe: (signal: AbortSignal) => Promise<T | false>, signal: AbortSignal): Promise<T> {
  const aborted = new Promise<never>((_, reject) => {
    const fail = (): void => reject(signal.reason as Error);
    if (signal.aborted) fail();
    else signal.addEventListener('abort', fail, { once: true });
  });
  aborted.catch(() => undefined); // observed below, or never needed
  for (;;) {
    signal.throwIfAborted();
    try {
      const answer = await Promise.race([probe(signal), aborted]);
      if (answer !== false) return answer;
    } catch {
      // not yet (or the deadline: thrown at the loop's top)
    }
    // The deadline's reason, not the timer's AbortError, is what the operator needs to read.
    await sleep(20, undefined, { signal }).catch(() => signal.throwIfAborted());
  }
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
