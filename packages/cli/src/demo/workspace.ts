import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient, type AgentConfigInput } from '@baton/agent';
import type { AgentResult } from '@baton/core';
import { DemoChild } from './child.js';
import { connectWhenUp, until } from './wait.js';

export const CLI_ENTRY = fileURLToPath(new URL('../main.js', import.meta.url));

/** An agent the demo started: its process, its socket and where it keeps its state. */
export interface DemoAgent {
  host: string;
  child: DemoChild;
  socket: string;
  stateDir: string;
  /** What the agent answered to `hello` once it listened. */
  hello: AgentResult<'hello'>;
}

/**
 * A demo's directory: disk images and the lock directory every host shares (one lockspace,
 * `images`), and one directory per agent. Removed when the demo has finished; left in place
 * when it failed, for the operator to look at.
 */
export class DemoWorkspace {
  readonly images: string;
  readonly locks: string;

  private constructor(readonly dir: string) {
    this.images = join(dir, 'images');
    this.locks = join(dir, 'locks');
    mkdirSync(this.images);
    mkdirSync(this.locks);
  }

  /**
   * Runs a demo's story in a new workspace. The story's own disposals (its processes, its VMs)
   * are over when it returns, so nothing writes into the directory after it is removed.
   */
  static async run(name: string, story: (ws: DemoWorkspace) => Promise<void>): Promise<void> {
    // Real paths throughout: the agents lock a disk under its canonical path.
    const ws = new DemoWorkspace(realpathSync(mkdtempSync(join(tmpdir(), `baton-${name}-`))));
    await story(ws);
    rmSync(ws.dir, { recursive: true, force: true });
  }

  /** A new, empty disk image. */
  disk(name: string): string {
    const path = join(this.images, name);
    writeFileSync(path, '', { flag: 'wx' });
    return path;
  }

  /**
   * Starts `baton agent` for `host` with the shared lockspace and `extra` on top of the config,
   * and waits until it answers on its socket.
   */
  async startAgent(host: string, extra: Partial<AgentConfigInput>, signal: AbortSignal): Promise<DemoAgent> {
    const home = join(this.dir, host);
    mkdirSync(home);
    const stateDir = join(home, 'state');
    const socket = join(home, 'agent.sock');
    const config: AgentConfigInput = {
      hostId: host,
      stateDir,
      socket: { path: socket },
      http: { host: '127.0.0.1', port: 0 },
      lockspaces: [{ name: 'images', kind: 'indirect', dir: this.locks, roots: [this.images] }],
      logLevel: 'warn',
      ...extra,
    };
    const configPath = join(home, 'agent.json');
    writeFileSync(configPath, JSON.stringify(config, null, 2));
    const child = new DemoChild([CLI_ENTRY, 'agent', '--config', configPath]);
    // An agent that refuses its configuration exits at once (its error on stderr): no use waiting.
    const gone = new AbortController();
    void child.exited.then((code) => gone.abort(new Error(`the agent of ${host} exited (status ${code}) before it listened`)));
    try {
      await using client = await connectWhenUp(socket, AbortSignal.any([signal, gone.signal]));
      return { host, child, socket, stateDir, hello: await client.request('hello') };
    } catch (err) {
      await child[Symbol.asyncDispose]();
      throw err;
    }
  }
}

/**
 * Stops an agent the way an operator would, keeping its locks' promise: refused (LOCKS_HELD)
 * until the agent has seen its last VM's process go, so it is asked until it agrees.
 */
export async function stopAgent(agent: DemoAgent, signal: AbortSignal): Promise<void> {
  await until(async () => {
    await using c = await AgentClient.connect({ socketPath: agent.socket });
    return c.request('shutdown', { releaseAll: false });
  }, signal);
  await agent.child.exited;
}
