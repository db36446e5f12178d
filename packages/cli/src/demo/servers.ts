import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * etcd and nats-server for the cluster demo, from the machine's packages (`npm run demo` installs
 * them), on free loopback ports, with their data in the demo's directory.
 */

const SYSTEM_BIN_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
const STOP_GRACE_MS = 5_000;

function which(binary: string): string {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), ...SYSTEM_BIN_DIRS]) {
    const path = join(dir, binary);
    if (dir && existsSync(path)) return path;
  }
  throw new Error(`${binary} is not installed (Debian: apt-get install ${binary === 'etcd' ? 'etcd-server' : binary}); \`npm run demo\` installs it`);
}

/** `n` distinct free loopback ports: each held until all are picked, so none is handed out twice. */
async function freePorts(n: number): Promise<number[]> {
  const servers = Array.from({ length: n }, () => createServer());
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))));
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return ports;
}

/** Polls `url` until it answers 200, or the deadline passes. */
async function healthy(url: string, proc: ChildProcess, deadlineMs: number): Promise<void> {
  const signal = AbortSignal.timeout(deadlineMs);
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${String(proc.spawnfile)} exited with ${proc.exitCode} while starting`);
    try {
      const res = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(500)]) });
      if (res.ok) return;
    } catch {
      // not up yet
    }
    if (signal.aborted) throw new Error(`${url} did not become healthy within ${deadlineMs} ms`);
    await sleep(50, undefined, { signal }).catch(() => undefined);
  }
}

export class DemoServer implements AsyncDisposable {
  private constructor(
    private readonly proc: ChildProcess,
    readonly url: string,
  ) {}

  static async etcd(dir: string): Promise<DemoServer> {
    const [client, peer] = (await freePorts(2)) as [number, number];
    mkdirSync(dir, { recursive: true });
    const peerUrl = `http://127.0.0.1:${peer}`;
    const url = `http://127.0.0.1:${client}`;
    const proc = spawn(
      which('etcd'),
      ['--name', 'demo', '--data-dir', dir, '--listen-client-urls', url, '--advertise-client-urls', url, '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl, '--initial-cluster', `demo=${peerUrl}`, '--log-level', 'error'],
      { stdio: 'ignore' },
    );
    await healthy(`${url}/health`, proc, 20_000);
    return new DemoServer(proc, url);
  }

  static async nats(dir: string): Promise<DemoServer> {
    const [port, monitor] = (await freePorts(2)) as [number, number];
    mkdirSync(dir, { recursive: true });
    const proc = spawn(which('nats-server'), ['-a', '127.0.0.1', '-p', String(port), '-m', String(monitor), '-js', '-sd', dir], { stdio: 'ignore' });
    await healthy(`http://127.0.0.1:${monitor}/healthz`, proc, 20_000);
    return new DemoServer(proc, `nats://127.0.0.1:${port}`);
  }

  /** SIGTERM, and SIGKILL if the server has not exited within STOP_GRACE_MS. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.proc.kill('SIGTERM');
    const grace = setTimeout(() => this.proc.kill('SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(grace);
  }
}
