import { DEFAULT_STOP_GRACE_MS, ManagedProcess, type ExitInfo } from './process.js';
import { removeDir } from './temp-dir.js';
import { describe, waitFor } from './wait-for.js';

/** How long a server may take to answer its readiness probe after a (re)start. */
export const DEFAULT_START_TIMEOUT_MS = 10_000;
const OUTPUT_TAIL_LINES = 40;

export interface LaunchSpec {
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

export interface ReadyOptions {
  /** @default DEFAULT_START_TIMEOUT_MS */
  deadlineMs?: number;
  signal?: AbortSignal;
}

function tail(output: string): string {
  return output.split('\n').slice(-OUTPUT_TAIL_LINES).join('\n');
}

/** The server process exited while we waited for it, e.g. because its port was taken. */
export class ProcessExitedError extends Error {
  override readonly name = 'ProcessExitedError';
  readonly output: string;
  constructor(what: string, exit: ExitInfo | undefined, output: string) {
    const how = exit?.signal != null ? `signal ${exit.signal}` : `code ${exit?.code ?? '?'}`;
    super(`${what} exited (${how}) before it was ready; its last output:\n${tail(output)}`);
    this.output = output;
  }
}

/** Whether a start failed only because another process grabbed one of the ports first. */
export function isAddressInUse(error: unknown): boolean {
  return error instanceof ProcessExitedError && /address already in use/i.test(error.output);
}

/**
 * Builds and starts a server, choosing fresh ports and retrying when the ones it was given were
 * taken between {@link freePorts} closing them and the server binding them.
 */
export async function startWithPortRetry<S extends AsyncDisposable>(
  create: () => Promise<S>,
  start: (server: S) => Promise<void>,
  attempts = 3,
): Promise<S> {
  for (let attempt = 1; ; attempt++) {
    const server = await create();
    try {
      await start(server);
      return server;
    } catch (error) {
      await server[Symbol.asyncDispose]();
      if (attempt >= attempts || !isAddressInUse(error)) throw error;
    }
  }
}

/**
 * One server process on fixed loopback ports and a fixed data dir, which survive `restart()`.
 * Subclasses say how to launch it and how to prove it is ready.
 */
export abstract class LocalServer implements AsyncDisposable {
  /** Names the server in errors, e.g. `nats-server :4222`. */
  abstract readonly name: string;
  /** Directories this object created and removes on close. */
  protected readonly ownedDirs: string[] = [];
  protected stopGraceMs = DEFAULT_STOP_GRACE_MS;
  #process: ManagedProcess | undefined;
  #closing: Promise<void> | undefined;

  protected abstract spec(): LaunchSpec;
  /** Resolves once the server answers as a ready server would; throws otherwise. */
  protected abstract probe(signal: AbortSignal): Promise<unknown>;

  /** The current process, if one was started. */
  get process(): ManagedProcess | undefined {
    return this.#process;
  }

  get pid(): number | undefined {
    return this.#process?.pid;
  }

  get running(): boolean {
    return this.#process?.running ?? false;
  }

  /** The last lines the current process wrote. */
  output(): string {
    return this.#process?.output() ?? '';
  }

  /** Starts the process without waiting for readiness (a cluster starts every member first). */
  async spawn(): Promise<void> {
    if (this.#closing !== undefined) throw new Error(`${this.name} is closed`);
    if (this.running) throw new Error(`${this.name} is already running (pid ${this.pid})`);
    const spec = this.spec();
    this.#process = await ManagedProcess.spawn({
      name: this.name,
      command: spec.command,
      args: spec.args,
      ...(spec.env === undefined ? {} : { env: spec.env }),
    });
  }

  /** Waits until the probe passes; fails at once, with the server's output, if the process exits. */
  async waitReady(options: ReadyOptions = {}): Promise<void> {
    const child = this.#process;
    if (child === undefined) throw new Error(`${this.name} was never started`);
    const died = new AbortController();
    void child.exited.then(() => died.abort(new Error(`${this.name} exited`)));
    try {
      await waitFor((signal) => this.probe(signal), {
        what: `${this.name} to become ready`,
        deadlineMs: options.deadlineMs ?? DEFAULT_START_TIMEOUT_MS,
        signal: options.signal === undefined ? died.signal : AbortSignal.any([died.signal, options.signal]),
      });
    } catch (error) {
      if (!child.running) throw new ProcessExitedError(this.name, child.exitInfo, child.output());
      throw new Error(`${describe(error)}\n--- last output of ${this.name} ---\n${tail(child.output())}`, {
        cause: error,
      });
    }
  }

  async start(options: ReadyOptions = {}): Promise<void> {
    await this.spawn();
    await this.waitReady(options);
  }

  /** SIGTERM, then SIGKILL after a short grace period; waits for the exit. */
  async stop(graceMs: number = this.stopGraceMs): Promise<void> {
    await this.#process?.stop(graceMs);
  }

  /** Sends `signal` to the server's process group; for SIGKILL, also waits until it has exited. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.#process;
    if (child === undefined || !child.running) return;
    child.kill(signal);
    if (signal === 'SIGKILL') await child.exited;
  }

  /** Freezes the server (SIGSTOP): its sockets stay open but nothing answers. */
  async pause(): Promise<void> {
    await this.#process?.pause();
  }

  async resume(): Promise<void> {
    await this.#process?.resume();
  }

  /** Stops the server if it runs, then starts it again on the same ports and data dir. */
  async restart(options: ReadyOptions = {}): Promise<void> {
    await this.stop();
    await this.start(options);
  }

  /** SIGKILLs the server and removes the directories it created; idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#process?.close();
      await Promise.all(this.ownedDirs.map(removeDir));
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
