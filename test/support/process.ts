import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { waitFor } from './wait-for.js';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ManagedProcessOptions {
  /** Names the process in errors and logs, e.g. `etcd member m1`. */
  name: string;
  command: string;
  args?: readonly string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** How many lines of stdout+stderr to keep for error messages. @default 200 */
  outputLines?: number;
}

/** Grace period between SIGTERM and SIGKILL in {@link ManagedProcess.stop}. */
export const DEFAULT_STOP_GRACE_MS = 2_000;
const VERBOSE = process.env['BATON_TEST_VERBOSE'] === '1';

// Every child still running, so a dying test process can take them with it.
const live = new Set<ManagedProcess>();
let exitHookInstalled = false;
// Every child started since the current test began, running or not: a failed test prints their
// last lines (failure-report.ts), since a flake under CI load may never repeat on a quiet machine.
const startedInTest: ManagedProcess[] = [];

/** The children started since the last call, oldest first; the list starts over. */
export function takeStartedProcesses(): ManagedProcess[] {
  return startedInTest.splice(0);
}

/** SIGKILLs every live child's process group; synchronous, so it is safe in an 'exit' hook. */
export function killAllChildrenSync(): void {
  for (const child of live) {
    try {
      child.signal('SIGKILL');
    } catch {
      // Nothing to do about it while exiting; the others still have to die.
    }
  }
}

// The 'exit' hook does not run when the test process itself is killed by a signal; the kernel's
// parent-death signal does, so children are wrapped in setpriv when it is installed.
// BATON_TEST_PDEATHSIG=0 turns that off, so the 'exit' hook can be tested on its own.
const SETPRIV = ((): string | undefined => {
  if (process.env['BATON_TEST_PDEATHSIG'] === '0') return undefined;
  try {
    accessSync('/usr/bin/setpriv', constants.X_OK);
    return '/usr/bin/setpriv';
  } catch {
    return undefined;
  }
})();

/**
 * setpriv arms the parent-death signal with prctl() and then execs the command; until it has, a
 * parent that dies leaves the child unarmed (seen under load). Waiting for the exec makes the
 * guarantee hold from the moment spawn() returns.
 */
async function pastSetpriv(child: ManagedProcess): Promise<void> {
  await waitFor(
    () => {
      if (!child.running) return true;
      try {
        return readlinkSync(`/proc/${child.pid}/exe`) !== SETPRIV;
      } catch {
        return true;
      }
    },
    { what: `${child.name} to exec past setpriv`, deadlineMs: 10_000, intervalMs: 1 },
  );
}

/**
 * A child process in its own process group: signals go to the whole group, its output is kept
 * in a ring buffer for error messages, and it dies with the test process.
 */
export class ManagedProcess implements AsyncDisposable {
  readonly name: string;
  readonly pid: number;
  /** Resolves (never rejects) when the process has exited and been reaped. */
  readonly exited: Promise<ExitInfo>;
  #exit: ExitInfo | undefined;
  #closing: Promise<void> | undefined;
  readonly #lines: string[] = [];
  readonly #maxLines: number;

  private constructor(child: ChildProcess, pid: number, options: ManagedProcessOptions) {
    this.name = options.name;
    this.pid = pid;
    this.#maxLines = options.outputLines ?? 200;
    this.exited = new Promise<ExitInfo>((resolve) => {
      child.once('exit', (code, signal) => {
        this.#exit = { code, signal };
        // Orphaned grandchildren would outlive the test; the group id stays valid while they run.
        this.signal('SIGKILL');
        live.delete(this);
        resolve(this.#exit);
      });
    });
    for (const stream of [child.stdout, child.stderr]) {
      if (stream === null) continue;
      stream.setEncoding('utf8');
      let partial = '';
      stream.on('data', (text: string) => {
        const parts = (partial + text).split('\n');
        partial = parts.pop() ?? '';
        for (const line of parts) this.#record(line);
      });
      stream.on('end', () => {
        if (partial !== '') this.#record(partial);
      });
    }
  }

  /** Spawns `command`; rejects if it cannot be started at all (e.g. not executable). */
  static async spawn(options: ManagedProcessOptions): Promise<ManagedProcess> {
    if (!exitHookInstalled) {
      process.on('exit', killAllChildrenSync);
      exitHookInstalled = true;
    }
    const args = options.args ?? [];
    const [command, argv] =
      SETPRIV === undefined
        ? [options.command, args]
        : [SETPRIV, ['--pdeathsig', 'KILL', '--', options.command, ...args]];
    const child = spawn(command, argv, {
      // A new process group, so one signal reaches everything the server forks.
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (error) =>
        reject(new Error(`cannot start ${options.name} (${options.command}): ${error.message}`, { cause: error })),
      );
    });
    if (child.pid === undefined) throw new Error(`${options.name} started without a pid`);
    const managed = new ManagedProcess(child, child.pid, options);
    live.add(managed);
    startedInTest.push(managed);
    if (SETPRIV !== undefined) await pastSetpriv(managed);
    return managed;
  }

  get running(): boolean {
    return this.#exit === undefined;
  }

  /** How it exited, once it has. */
  get exitInfo(): ExitInfo | undefined {
    return this.#exit;
  }

  /** The last lines the process wrote to stdout and stderr. */
  output(): string {
    return this.#lines.join('\n');
  }

  /** Sends `sig` to the whole process group; a no-op once nothing of the group is left. */
  signal(sig: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, sig);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  }

  kill(sig: NodeJS.Signals = 'SIGKILL'): void {
    this.signal(sig);
  }

  /**
   * SIGSTOPs the group and resolves once every thread of the process has stopped: kill() returns
   * before a multi-threaded server (Go) has stopped, and it could still answer in between.
   */
  async pause(deadlineMs = 2_000): Promise<void> {
    this.signal('SIGSTOP');
    await waitFor(() => !this.running || threadStates(this.pid).every((state) => state === 'T'), {
      what: `${this.name} to stop on SIGSTOP`,
      deadlineMs,
      intervalMs: 1,
    });
  }

  /** SIGCONTs the group and resolves once no thread of the process is stopped any more. */
  async resume(deadlineMs = 2_000): Promise<void> {
    this.signal('SIGCONT');
    await waitFor(() => !this.running || threadStates(this.pid).every((state) => state !== 'T'), {
      what: `${this.name} to continue on SIGCONT`,
      deadlineMs,
      intervalMs: 1,
    });
  }

  /** SIGTERM, then SIGKILL if the process has not exited within `graceMs`. */
  async stop(graceMs: number = DEFAULT_STOP_GRACE_MS): Promise<ExitInfo> {
    if (this.#exit !== undefined) return this.#exit;
    this.signal('SIGTERM');
    // A stopped process would hold SIGTERM pending until the grace period ran out.
    this.signal('SIGCONT');
    const timer = new AbortController();
    const graceOver = delay(graceMs, 'grace-over' as const, { signal: timer.signal }).catch(() => 'cancelled' as const);
    const first = await Promise.race([this.exited, graceOver]);
    timer.abort();
    if (first === 'grace-over') this.signal('SIGKILL');
    return this.exited;
  }

  /** SIGKILLs the group and waits for the exit; idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.signal('SIGKILL');
      await this.exited;
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #record(line: string): void {
    this.#lines.push(line);
    if (this.#lines.length > this.#maxLines) this.#lines.shift();
    if (VERBOSE) process.stderr.write(`[${this.name}] ${line}\n`);
  }
}

/** The kernel's one-letter state of `pid` (R, S, T, Z...), or undefined when there is no such process. */
export function processState(pid: number | string): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** The states of every thread of `pid`; empty when there is no such process. */
export function threadStates(pid: number): string[] {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  // A thread may exit between the listing and the read; it has no state left to report.
  return tids.flatMap((tid) => processState(`${pid}/task/${tid}`) ?? []);
}

/** The children of `parent` that have exited and that nobody waited for (zombies). */
export function zombieChildren(parent: number): number[] {
  return readdirSync('/proc').flatMap((entry) => {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) return [];
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name: state, ppid, ...
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return state === 'Z' && Number(ppid) === parent ? [pid] : [];
    } catch {
      return []; // gone between the listing and the read
    }
  });
}

/** Whether `pid` is a running (or stopped) process; zombies count as gone. */
export function pidAlive(pid: number): boolean {
  const state = processState(pid);
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/**
 * Live processes whose command line contains `text` (a directory they were started on), this
 * process excluded: what a run left behind, whoever its parent was.
 */
export function processesMentioning(text: string): { pid: number; cmdline: string }[] {
  return readdirSync('/proc').flatMap((entry) => {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) return [];
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      return cmdline.includes(text) && pidAlive(pid) ? [{ pid, cmdline }] : [];
    } catch {
      return []; // gone between the listing and the read
    }
  });
}
