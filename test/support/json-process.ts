import { ManagedProcess } from './process.js';
import { waitFor } from './wait-for.js';

export type JsonEvent = Record<string, unknown>;

/**
 * A Baton program whose stdout is JSON lines (an agent's pino log, a sim VM's or lock probe's
 * events), run under ManagedProcess so it dies with the test.
 */
export class JsonProcess implements AsyncDisposable {
  private constructor(readonly proc: ManagedProcess) {}

  static async start(name: string, entry: string, args: readonly string[], env?: NodeJS.ProcessEnv): Promise<JsonProcess> {
    const proc = await ManagedProcess.spawn({ name, command: process.execPath, args: [entry, ...args], outputLines: 20_000, ...(env ? { env } : {}) });
    return new JsonProcess(proc);
  }

  get pid(): number {
    return this.proc.pid;
  }

  events(): JsonEvent[] {
    const out: JsonEvent[] = [];
    for (const line of this.proc.output().split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as JsonEvent);
      } catch {
        // a line cut by the ring buffer: not an event
      }
    }
    return out;
  }

  /** The first event that matches; fails early, naming the output, if the process exits first. */
  async event(match: (e: JsonEvent) => boolean, what: string, deadlineMs = 10_000): Promise<JsonEvent> {
    return waitFor(
      () => {
        const found = this.events().find(match);
        if (found) return found;
        if (!this.proc.running) throw new Error(`${this.proc.name} exited (${JSON.stringify(this.proc.exitInfo)}) before ${what}; output:\n${this.proc.output().slice(-4000)}`);
        return false;
      },
      { what: `${this.proc.name}: ${what}`, deadlineMs, intervalMs: 5 },
    );
  }

  close(): Promise<void> {
    return this.proc.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
