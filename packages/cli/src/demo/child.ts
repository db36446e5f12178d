import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** A program the demo runs (agent, sim VM, lock probe), whose stdout is a stream of JSON events. */
export class DemoChild implements AsyncDisposable {
  readonly proc: ChildProcess;
  private readonly events: Record<string, unknown>[] = [];
  private readonly waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;

  constructor(args: string[]) {
    this.proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    this.exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        return;
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** The first event (past or future) that matches, or an error once the deadline passes. */
  async event(match: (e: Record<string, unknown>) => boolean, signal: AbortSignal): Promise<Record<string, unknown>> {
    for (;;) {
      const found = this.events.find(match);
      if (found) return found;
      signal.throwIfAborted();
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        signal.addEventListener('abort', () => resolve(), { once: true });
        void this.exited.then(() => resolve());
      });
      if (this.proc.exitCode !== null && !this.events.some(match)) throw new Error(`process ${this.proc.pid} exited (${this.proc.exitCode}) before the awaited event`);
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    await this.exited;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill('SIGKILL');
  }
}
