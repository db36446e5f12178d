import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient, SimDriver, type AgentConfigInput } from '@baton/agent';
import { raceAbort, type AgentResult } from '@baton/core';
import { DemoChild } from './child.js';
import { connectWhenUp, say, until } from './wait.js';

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

const INTERRUPTS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
type Interrupt = (typeof INTERRUPTS)[number];

/**
 * A demo's directory: disk images and the lock directory every host shares (one lockspace,
 * `images`), and one directory per agent; and everything the demo started. Whichever way the
 * demo ends, its VMs and processes are stopped. The directory is removed when the demo finished or
 * was interrupted, and left in place when it failed, for the operator to look at.
 */
export class DemoWorkspace {
  readonly images: string;
  readonly locks: string;
  /** Servers and processes, stopped last started first. */
  private readonly owned: AsyncDisposable[] = [];
  /** Agents whose sim VMs run detached from them (they outlive an agent crash). */
  private readonly hypervisors: DemoAgent[] = [];
  /** Set once everything is being stopped: what the story starts after that is stopped at once. */
  private stopping = false;

  private constructor(readonly dir: string) {
    this.images = join(dir, 'images');
    this.locks = join(dir, 'locks');
    mkdirSync(this.images);
    mkdirSync(this.locks);
  }

  /**
   * Runs a demo's story in a new workspace. Ctrl-C (or SIGTERM, SIGHUP) stops the story where it
   * is: the agents would refuse to stop while their VMs hold locks, and the sim VMs are detached
   * from the terminal, so without this they would outlive the demo. A second Ctrl-C while they
   * are being stopped exits at once. The process exits when this returns or throws: an
   * interrupted story may still be waiting on a deadline, and nothing of it is worth waiting for.
   */
  static async run(name: string, story: (ws: DemoWorkspace) => Promise<void>): Promise<void> {
    // Real paths throughout: the agents lock a disk under its canonical path.
    const ws = new DemoWorkspace(realpathSync(mkdtempSync(join(tmpdir(), `baton-${name}-`))));
    const interrupted = Promise.withResolvers<Interrupt>();
    const onSignal = (signal: Interrupt): void => {
      if (ws.stopping) process.exit(128 + osConstants.signals[signal]);
      interrupted.resolve(signal);
    };
    // A bug that escapes the story (an unhandled rejection) fails the demo like a failed step, so
    // what it started is still stopped instead of orphaned by the crash; once stopping, it is shown.
    const onCrash = (err: unknown): void => (ws.stopping ? say(`while stopping: ${String(err)}`) : interrupted.reject(err));
    for (const s of INTERRUPTS) process.on(s, onSignal);
    process.on('unhandledRejection', onCrash);
    try {
      const signal = await Promise.race([story(ws).then(() => undefined), interrupted.promise]);
      await ws.stopEverything();
      rmSync(ws.dir, { recursive: true, force: true });
      if (signal !== undefined) {
        say(`\ninterrupted (${signal}): every VM and process the demo started is stopped, ${ws.dir} removed`);
        process.exitCode = 128 + osConstants.signals[signal];
      }
    } catch (err) {
      await ws.stopEverything();
      say(`\nthe demo failed; its directory is left for a look: ${ws.dir}`);
      throw err;
    } finally {
      for (const s of INTERRUPTS) process.off(s, onSignal);
      process.off('unhandledRejection', onCrash);
    }
  }

  /** Something the demo started, stopped when it ends (at once if the demo is already stopping). */
  own<T extends AsyncDisposable>(thing: T): T {
    this.owned.push(thing);
    if (this.stopping) void this.stopOwned();
    return thing;
  }

  /** A program the demo runs (`node` with these arguments), stopped when it ends. */
  spawn(args: string[]): DemoChild {
    return this.own(new DemoChild(args));
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
    const child = this.spawn([CLI_ENTRY, 'agent', '--config', configPath]);
    // An agent that refuses its configuration exits at once (its error on stderr): no use waiting.
    const gone = new AbortController();
    void child.exited.then((code) => gone.abort(new Error(`the agent of ${host} exited (status ${code}) before it listened`)));
    await using client = await connectWhenUp(socket, AbortSignal.any([signal, gone.signal]));
    const agent = { host, child, socket, stateDir, hello: await client.request('hello', undefined, { signal }) };
    if (config.hypervisor !== undefined) this.hypervisors.push(agent);
    return agent;
  }

  /**
   * Every process, last started first; then the VMs, through their hosts' hypervisors. Not the
   * other way round: an agent still running could start a VM (a migration's incoming copy) after
   * the VMs were listed.
   */
  private async stopEverything(): Promise<void> {
    this.stopping = true;
    await this.stopOwned();
    for (const { host, stateDir } of this.hypervisors) {
      using driver = new SimDriver(stateDir, host);
      await driver.destroyAll().catch((err: unknown) => say(`stopping the VMs of ${host} failed: ${String(err)}`));
    }
  }

  /** Each one tried, whatever the one before did: a failure is shown, not a reason to stop. */
  private async stopOwned(): Promise<void> {
    for (let thing = this.owned.pop(); thing !== undefined; thing = this.owned.pop()) {
      try {
        await thing[Symbol.asyncDispose]();
      } catch (err) {
        say(`stopping a process the demo started failed: ${String(err)}`);
      }
    }
  }
}

/**
 * Stops an agent the way an operator would, keeping its locks' promise: refused (LOCKS_HELD)
 * until the agent has seen its last VM's process go, so it is asked until it agrees.
 */
export async function stopAgent(agent: DemoAgent, signal: AbortSignal): Promise<void> {
  await until(async (s) => {
    await using c = await AgentClient.connect({ socketPath: agent.socket, signal: s });
    // Awaited before `c` is disposed: a refusal (LOCKS_HELD) arriving while the connection
    // closes would otherwise be an unhandled rejection, and end the demo.
    return await c.request('shutdown', { releaseAll: false }, { signal: s });
  }, signal);
  await raceAbort(agent.child.exited, signal);
}
