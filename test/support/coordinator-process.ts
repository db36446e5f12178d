import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CoordinatorConfigInput } from '@baton/coordinator';
import { CLI_ENTRY } from './agent-process.js';
import { JsonProcess } from './json-process.js';
import { makeTempDir, removeDir } from './temp-dir.js';

/**
 * A coordinator replica as a real process (`baton coordinator --config FILE`), so a test can
 * SIGKILL it as a crash would: no close(), no resignation, its candidacy left to expire with its
 * session. restart() starts a new process on the same config (a new HTTP port when the config
 * says 0, and a new session: it campaigns again at the end of the line).
 */
export class CoordinatorProcess implements AsyncDisposable {
  private proc: JsonProcess | undefined;
  private currentUrl = '';
  /** Every process this replica has been, for the log lines of earlier lives. */
  readonly lives: JsonProcess[] = [];

  private constructor(
    readonly id: string,
    readonly dir: string,
    readonly configPath: string,
  ) {}

  static async start(config: CoordinatorConfigInput): Promise<CoordinatorProcess> {
    const dir = await makeTempDir(`coordinator-${config.id}`);
    const configPath = join(dir, 'coordinator.json');
    writeFileSync(configPath, JSON.stringify(config));
    const c = new CoordinatorProcess(config.id, dir, configPath);
    try {
      await c.launch();
    } catch (err) {
      await c.close();
      throw err;
    }
    return c;
  }

  private async launch(): Promise<void> {
    const proc = await JsonProcess.start(`coordinator ${this.id}`, CLI_ENTRY, ['coordinator', '--config', this.configPath]);
    this.proc = proc;
    this.lives.push(proc);
    // It listens before it campaigns, and says where once it serves.
    const serving = await proc.event((e) => typeof e.msg === 'string' && e.msg.startsWith(`coordinator ${this.id} serving at`), 'serving', 15_000);
    this.currentUrl = String(serving.url);
  }

  /** This life's HTTP address. */
  get url(): string {
    return this.currentUrl;
  }

  get pid(): number {
    if (!this.proc) throw new Error(`coordinator ${this.id} is not running`);
    return this.proc.pid;
  }

  get running(): boolean {
    return this.proc?.proc.running ?? false;
  }

  /** Sends SIGKILL synchronously (close() does, before it waits: a caller can land it between two events), then waits for the exit. */
  async kill(): Promise<void> {
    await this.proc?.close();
  }

  /** A new process on the same config, as a supervisor would start after a crash. */
  async restart(): Promise<void> {
    if (this.running) throw new Error(`coordinator ${this.id} still runs (pid ${this.pid})`);
    await this.launch();
  }

  async close(): Promise<void> {
    await Promise.all(this.lives.map((p) => p.close()));
    await removeDir(this.dir);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
