import { spawn } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { CLI_ENTRY } from './agent-process.js';
import { assertLoopback } from './ports.js';
import type { ExitInfo, ManagedProcess } from './process.js';
import { makeTempDir, removeDir } from './temp-dir.js';
import { waitFor } from './wait-for.js';

/**
 * Ways an integration test talks to an agent besides AgentClient: a raw socket that shows every
 * reply as sent (AgentClient hands an id-less reply to its oldest pending request, which hides
 * exactly what protocol-error tests need to see), the CLI run as a process, and plain-text HTTP.
 */

/** One reply line as the agent wrote it, not validated (validation is what tests check). */
export interface RawReply {
  v?: unknown;
  id?: unknown;
  ok?: unknown;
  result?: unknown;
  error?: { code?: unknown; message?: unknown; details?: unknown };
}

/** A connection to the agent socket that writes bytes as given and reads replies line by line. */
export class RawAgentSocket implements AsyncDisposable {
  private readonly lines: string[] = [];
  private readonly waiters: (() => void)[] = [];
  private partial = '';
  private ended = false;
  /** Resolves when the agent (or we) closed the connection. */
  readonly closed: Promise<void>;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      const parts = (this.partial + text).split('\n');
      this.partial = parts.pop() ?? '';
      this.lines.push(...parts);
      this.wake();
    });
    socket.on('error', () => socket.destroy());
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
  }

  static async connect(path: string): Promise<RawAgentSocket> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawAgentSocket(socket);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** A well-formed request line; `v` and `id` may be overridden to make it ill-formed. */
  send(method: string, params: unknown = {}, envelope: { v?: unknown; id?: unknown } = {}): void {
    this.write(JSON.stringify({ v: 1, id: 1, ...envelope, method, params }) + '\n');
  }

  /** The next reply line; fails if none arrives within the deadline or the connection closes. */
  async next(deadlineMs = 5_000): Promise<RawReply> {
    const deadline = AbortSignal.timeout(deadlineMs);
    while (this.lines.length === 0) {
      if (this.ended) throw new Error('the agent closed the connection before replying');
      if (deadline.aborted) throw new Error(`no reply within ${deadlineMs} ms`);
      await new Promise<void>((resolve) => {
        const done = (): void => {
          deadline.removeEventListener('abort', done);
          resolve();
        };
        this.waiters.push(done);
        deadline.addEventListener('abort', done, { once: true });
      });
    }
    return JSON.parse(this.lines.shift()!) as RawReply;
  }

  /** Send one request and read the next reply. */
  async call(method: string, params: unknown = {}, envelope: { v?: unknown; id?: unknown } = {}): Promise<RawReply> {
    this.send(method, params, envelope);
    return this.next();
  }

  async close(): Promise<void> {
    this.socket.end();
    await this.closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.socket.destroy();
    await this.closed;
  }
}

export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A word the shell reads back as exactly `word`. */
const shellWord = (word: string): string => `'${word.replaceAll("'", `'\\''`)}'`;

/**
 * `baton <args>` as a user runs it: a node process, stdout and stderr kept apart. The runner's own
 * `BATON_*` variables are left out (they would reconfigure the CLI); `env` adds variables. It is
 * killed (and the call fails) if it has not exited within the deadline. With `tty`, it runs on a
 * pseudo-terminal, as at an operator's prompt, through util-linux's `script` (Debian's essential
 * bsdutils): stdout and stderr are then the one terminal, all in `stdout`, lines ending in CRLF.
 */
export function runCli(args: readonly string[], opts: { env?: Record<string, string>; deadlineMs?: number; tty?: boolean } = {}): Promise<CliResult> {
  const deadlineMs = opts.deadlineMs ?? 15_000;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BATON_')));
  const argv = [process.execPath, CLI_ENTRY, ...args];
  // -e: script exits with the command's status; -q: no "Script started" banner; the log goes nowhere.
  const [file, ...rest] = opts.tty ? ['script', '-qec', argv.map(shellWord).join(' '), '/dev/null'] : argv;
  return new Promise((resolve, reject) => {
    const child = spawn(file!, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (t: string) => (stdout += t));
    child.stderr.setEncoding('utf8').on('data', (t: string) => (stderr += t));
    // SIGTERM first: a command that started processes (the demo) stops them on it; SIGKILL
    // would orphan them. SIGKILL only if it has not exited a few seconds later.
    let killer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      reject(new Error(`baton ${args.join(' ')} did not exit within ${deadlineMs} ms; stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, deadlineMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (status, signal) => {
      clearTimeout(timer);
      clearTimeout(killer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** One GET to a loopback HTTP server, the body as text (Prometheus metrics are not JSON). */
export function httpText(url: string, timeoutMs = 2_000): Promise<{ status: number; body: string }> {
  const target = new URL(url);
  assertLoopback(target.hostname);
  return new Promise((resolve, reject) => {
    const req = httpRequest(target, { agent: false, signal: AbortSignal.timeout(timeoutMs) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (t: string) => (body += t));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A temporary directory removed with the fixture (for files that must exist before an agent starts). */
export class ScratchDir implements AsyncDisposable {
  private constructor(readonly path: string) {}

  static async create(prefix: string): Promise<ScratchDir> {
    return new ScratchDir(await makeTempDir(prefix));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await removeDir(this.path);
  }
}

/** How `proc` exited, waiting at most `deadlineMs` for it to do so. */
export function exitOf(proc: ManagedProcess, deadlineMs = 5_000): Promise<ExitInfo> {
  return waitFor(() => proc.exitInfo ?? false, { what: `${proc.name} to exit`, deadlineMs, intervalMs: 5 });
}
