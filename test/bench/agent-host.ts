// A real agent process for the benchmark: `node packages/cli/dist/main.js agent --config …`,
// started through the harness's ManagedProcess (own process group, dies with the bench).
//
// Unlike the test fixture (AgentProcess), the agent's log goes to a file rather than a pipe into
// the bench process: the fixture parses and keeps every log line in memory, which at one or two
// lines per request would put the log consumer's work into the client's timings. Writing the log
// (pino, synchronous) is still the agent's own cost, as it is in production.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentClient } from '@baton/agent';
import type { EtcdConfigInput } from '@baton/etcd';
import { fileURLToPath } from 'node:url';
import { ManagedProcess, waitFor } from '../support/index.js';

/**
 * The CLI's entry, from test/dist/bench/. (The harness's CLI_ENTRY is relative to the test
 * sources that vitest runs; from the compiled test/dist/support it points one level short.)
 */
const CLI_ENTRY = fileURLToPath(new URL('../../../packages/cli/dist/main.js', import.meta.url));

export interface BenchAgentOptions {
  /** Holds the config, the state dir, the socket and the log. */
  dir: string;
  /** The indirect lockspace's directory. */
  lockDir: string;
  logLevel?: string;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeFlags?: string[];
  /** The host's name in the cluster (default `bench`). */
  hostId?: string;
  /** The agent config's `etcd` section: with it every grant is also an etcd lease. */
  etcd?: EtcdConfigInput;
}

export class BenchAgent implements AsyncDisposable {
  private constructor(
    readonly proc: ManagedProcess,
    readonly socketPath: string,
    readonly logPath: string,
    readonly stateDir: string,
  ) {}

  static async start(opts: BenchAgentOptions): Promise<BenchAgent> {
    const socketPath = join(opts.dir, 'agent.sock');
    const stateDir = join(opts.dir, 'state');
    const logPath = join(opts.dir, 'agent.log');
    const configPath = join(opts.dir, 'agent.json');
    writeFileSync(
      configPath,
      JSON.stringify({
        hostId: opts.hostId ?? 'bench',
        stateDir,
        socket: { path: socketPath },
        http: { host: '127.0.0.1', port: 0 },
        lockspaces: [{ name: 'bench', kind: 'indirect', dir: opts.lockDir }],
        logLevel: opts.logLevel ?? 'info',
        ...(opts.etcd === undefined ? {} : { etcd: opts.etcd }),
      }),
    );
    const node = [process.execPath, ...(opts.nodeFlags ?? []), CLI_ENTRY, 'agent', '--config', configPath].map(shellQuote).join(' ');
    // `exec`: the shell becomes the agent, so the pid we hold is the agent's (taskset, /proc, SIGUSR1).
    const proc = await ManagedProcess.spawn({ name: `bench agent ${opts.hostId ?? 'bench'}`, command: '/bin/sh', args: ['-c', `exec ${node} >>${shellQuote(logPath)} 2>&1`] });
    const agent = new BenchAgent(proc, socketPath, logPath, stateDir);
    // An agent that exits aborts the wait at once, with its log in the error.
    const exited = new AbortController();
    void proc.exited.then(() => exited.abort(new Error(`the agent exited ${JSON.stringify(proc.exitInfo)} before serving; its log:\n${tail(logPath)}`)));
    await waitFor(
      async () => {
        await using c = await AgentClient.connect({ socketPath });
        return await c.request('hello');
      },
      { what: 'the bench agent to answer hello', deadlineMs: 15_000, intervalMs: 10, signal: exited.signal },
    );
    if (opts.etcd !== undefined) {
      // Wait until the cluster methods answer: the session exists and grants go through etcd.
      // (An agent that answered on its socket before joining granted local locks with no etcd
      // lease in that window; fixed in the agent since, and this wait costs one round trip.)
      await waitFor(
        async () => {
          await using c = await AgentClient.connect({ socketPath });
          // Awaited here: a refusal must settle before the connection is disposed of.
          return await c.request('hosts');
        },
        { what: 'the bench agent to join the cluster', deadlineMs: 15_000, intervalMs: 10, signal: exited.signal },
      );
    }
    return agent;
  }

  get pid(): number {
    return this.proc.pid;
  }

  async client(): Promise<AgentClient> {
    return AgentClient.connect({ socketPath: this.socketPath });
  }

  /** Stop cleanly (locks released on purpose), so a --cpu-prof profile gets written. */
  async shutdown(): Promise<void> {
    if (!this.proc.running) return;
    try {
      await using c = await this.client();
      await c.request('shutdown', { releaseAll: true });
    } catch {
      // already going away
    }
    await Promise.race([this.proc.exited, new Promise((r) => setTimeout(r, 10_000))]);
    await this.proc.close();
  }

  async close(): Promise<void> {
    await this.proc.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function tail(path: string): string {
  try {
    return readFileSync(path, 'utf8').slice(-4000);
  } catch {
    return '(no log)';
  }
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
