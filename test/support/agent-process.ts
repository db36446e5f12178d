import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient, LOCK_PROBE_ENTRY, SIM_VM_ENTRY, type AgentConfigInput } from '@baton/agent';
import { JsonProcess } from './json-process.js';
import { monoNow } from './stamped-events.js';
import { makeTempDir, removeDir } from './temp-dir.js';
import { waitFor } from './wait-for.js';

/** The built CLI, found from test/support (sources) or test/dist/support (the compiled bench). */
export const CLI_ENTRY = ((): string => {
  for (const up of ['../../', '../../../']) {
    const candidate = fileURLToPath(new URL(`${up}packages/cli/dist/main.js`, import.meta.url));
    if (existsSync(candidate)) return candidate;
  }
  throw new Error('packages/cli/dist/main.js not found: build first (npm run build)');
})();

/** Storage several simulated hosts share, as hosts share NFS: a lock directory and an images directory. */
export class SharedStorage implements AsyncDisposable {
  private constructor(
    readonly root: string,
    readonly lockDir: string,
    readonly imagesDir: string,
  ) {}

  static async create(): Promise<SharedStorage> {
    const root = await makeTempDir('storage');
    const s = new SharedStorage(root, join(root, 'locks'), join(root, 'images'));
    mkdirSync(s.lockDir);
    mkdirSync(s.imagesDir);
    return s;
  }

  /** A disk image file (empty) in the shared images directory. */
  image(name: string): string {
    const path = join(this.imagesDir, name);
    writeFileSync(path, '', { flag: 'a' });
    return path;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await removeDir(this.root);
  }
}

export interface AgentProcessOptions {
  storage: SharedStorage;
  hostId?: string;
  /** Merged over the fixture's config (lockspaces replace). */
  config?: Partial<AgentConfigInput>;
  env?: NodeJS.ProcessEnv;
}

/** A real agent process (`baton agent`) with its own state dir and socket. */
export class AgentProcess implements AsyncDisposable {
  private readonly clients: AgentClient[] = [];

  private constructor(
    private process: JsonProcess,
    readonly dir: string,
    readonly socketPath: string,
    readonly config: AgentConfigInput,
  ) {}

  /** The current agent process (a new one after `restart`). */
  get json(): JsonProcess {
    return this.process;
  }

  static configFor(dir: string, opts: AgentProcessOptions): AgentConfigInput {
    return {
      hostId: opts.hostId ?? 'host-a',
      stateDir: join(dir, 'state'),
      socket: { path: join(dir, 'agent.sock') },
      http: { host: '127.0.0.1', port: 0 },
      lockspaces: [{ name: 'images', kind: 'indirect', dir: opts.storage.lockDir, roots: [opts.storage.imagesDir] }],
      owners: { termGraceMs: 500, pidPollMs: 20 },
      logLevel: 'info',
      ...opts.config,
    };
  }

  static async start(opts: AgentProcessOptions): Promise<AgentProcess> {
    const dir = await makeTempDir(`agent-${opts.hostId ?? 'host-a'}`);
    const config = AgentProcess.configFor(dir, opts);
    writeFileSync(join(dir, 'agent.json'), JSON.stringify(config));
    const agent = new AgentProcess(await AgentProcess.launch(dir, config, opts.env), dir, config.socket!.path!, config);
    return agent;
  }

  private static async launch(dir: string, config: AgentConfigInput, env?: NodeJS.ProcessEnv): Promise<JsonProcess> {
    const json = await JsonProcess.start(`agent ${config.hostId}`, CLI_ENTRY, ['agent', '--config', join(dir, 'agent.json')], env);
    await json.event((e) => typeof e.msg === 'string' && e.msg.startsWith('agent started'), 'agent started');
    return json;
  }

  /** SIGKILL the agent (a crash, an OOM kill): its VMs keep running, its state dir stays. */
  async crash(): Promise<void> {
    await Promise.all(this.clients.splice(0).map((c) => c.close()));
    await this.process.close();
  }

  /** Start the agent again on the same config and state dir, as systemd would after a crash. */
  async restart(env?: NodeJS.ProcessEnv): Promise<void> {
    this.process = await AgentProcess.launch(this.dir, this.config, env);
  }

  get pid(): number {
    return this.json.pid;
  }

  get stateDir(): string {
    return this.config.stateDir!;
  }

  /** A new connection, closed with the fixture. */
  async client(): Promise<AgentClient> {
    const c = await AgentClient.connect({ socketPath: this.socketPath });
    this.clients.push(c);
    return c;
  }

  /** SIGUSR1, then wait until the new image serves: resolves with its generation. */
  async reexec(deadlineMs = 10_000): Promise<number> {
    const before = this.json.events().filter((e) => typeof e.msg === 'string' && e.msg.startsWith('agent re-executed')).length;
    process.kill(this.pid, 'SIGUSR1');
    const e = await waitFor(
      () => this.json.events().filter((ev) => typeof ev.msg === 'string' && ev.msg.startsWith('agent re-executed'))[before] ?? false,
      { what: `agent ${this.config.hostId} re-exec #${before + 1}`, deadlineMs, intervalMs: 2 },
    );
    return e.generation as number;
  }

  /** Log lines with a given error code. */
  logsWithCode(code: string): Record<string, unknown>[] {
    return this.json.events().filter((e) => e.code === code);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
    await this.json.close();
    await removeDir(this.dir);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Another process's attempt at a lock file (as virtlockd or QEMU would make it). */
export async function tryLockFrom(path: string, opts: { kind?: 'posix' | 'ofd'; mode?: 'exclusive' | 'shared'; ranges?: string[] } = {}): Promise<'granted' | 'busy'> {
  await using p = await JsonProcess.start('lock-try', LOCK_PROBE_ENTRY, [
    '--path', path, '--op', 'try', '--lock-kind', opts.kind ?? 'posix', '--mode', opts.mode ?? 'exclusive',
    ...(opts.ranges ?? ['0:1']).flatMap((r) => ['--range', r]),
  ]);
  const e = await p.event((ev) => ev.event === 'granted' || ev.event === 'busy', 'lock attempt');
  return e.event as 'granted' | 'busy';
}

export function startProbe(path: string, args: string[] = []): Promise<JsonProcess> {
  return JsonProcess.start('lock-probe', LOCK_PROBE_ENTRY, ['--path', path, ...args]);
}

export interface SimVmOptions {
  uuid: string;
  name: string;
  disks?: string[];
  shared?: string[];
  intervalMs?: number;
  /** What the agent does to the VM when the host loses its cluster session. */
  policy?: 'kill' | 'pause' | 'killpath';
  /** With policy killpath: the command the agent runs (it appends the VM's uuid and pid). */
  killpath?: string[];
  /** How often the VM renews its write deadline with the agent. */
  watchdogMs?: number;
}

/** Once the sim VM runs: its first grant's token, and when it was seen running (monotonic ms). */
export async function simVmRunning(vm: JsonProcess): Promise<{ token: number; at: number }> {
  const running = await vm.event((e) => e.event === 'running', 'running');
  return { token: (running.grants as { token: number }[])[0]!.token, at: monoNow() };
}

export function startSimVm(agent: AgentProcess, opts: SimVmOptions): Promise<JsonProcess> {
  return JsonProcess.start(`vm ${opts.name}`, SIM_VM_ENTRY, [
    '--socket', agent.socketPath, '--uuid', opts.uuid, '--name', opts.name, '--host', String(agent.config.hostId),
    '--interval-ms', String(opts.intervalMs ?? 20),
    '--policy', opts.policy ?? 'kill', '--watchdog-ms', String(opts.watchdogMs ?? 50),
    ...(opts.killpath ? ['--killpath', JSON.stringify(opts.killpath)] : []),
    ...(opts.disks ?? []).flatMap((d) => ['--disk', d]),
    ...(opts.shared ?? []).flatMap((d) => ['--shared', d]),
  ]);
}
