import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '@baton/agent';

/**
 * Ask `probe` every 20 ms until it answers something other than false, or the signal aborts.
 * A probe that throws is asked again: the thing it asks about is not there yet.
 */
export async function until<T>(probe: () => Promise<T | false>, signal: AbortSignal): Promise<T> {
  for (;;) {
    signal.throwIfAborted();
    try {
      const answer = await probe();
      if (answer !== false) return answer;
    } catch {
      // not yet
    }
    // The deadline's reason, not the timer's AbortError, is what the operator needs to read.
    await sleep(20, undefined, { signal }).catch(() => signal.throwIfAborted());
  }
}

/** The agent is not listening while it starts, nor for a few milliseconds of each re-exec. */
export function connectWhenUp(socketPath: string, signal: AbortSignal): Promise<AgentClient> {
  return until(() => AgentClient.connect({ socketPath, signal }), signal);
}

export function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

export function step(n: number, text: string): void {
  say(process.stdout.isTTY ? `\n\x1b[1m${n}. ${text}\x1b[0m` : `\n${n}. ${text}`);
}
