// Round-trip latencies measured side by side in one run: the NDJSON echo floor, the agent's grant
// (through the product's AgentClient and through a bare line client), and a redlock-style
// acquire on a local Redis through ioredis, under one CPU placement at a time.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { AgentClient } from '@baton/agent';
import { PROTOCOL_VERSION } from '@baton/core';
import { RedisServer, type ManagedProcess } from '../support/index.js';
import { BenchAgent } from './agent-host.js';
import { LineClient } from './line-client.js';
import { startLineServer } from './line-server.js';
import { runInterleaved, nowUs, Samples, type Loop, type Summary } from './stats.js';
import { pin } from './sys.js';

/** Redlock's release: delete the key only if it still holds our token. */
const RELEASE_LUA = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`;
type LockRedis = Redis & { releaseLock(key: string, token: string): Promise<number> };

export interface Placement {
  name: string;
  /** What the table says about it. */
  describe: string;
  /** CPUs for the bench process (the client side). */
  client: string;
  /** CPUs for the servers: echo server, agents, redis-server. */
  servers: string;
}

export const SERIES = ['echo', 'raw.hello', 'grant.acquire', 'grant.cycle', 'raw.acquire', 'raw.cycle', 'redis.acquire', 'redis.cycle'] as const;
export type Series = (typeof SERIES)[number];

/**
 * Diagnostic agents, measured in the same run so their difference from the main agent is the
 * cost of what they change: no per-grant log lines (level warn), or the lock and state dirs on
 * the other storage (disk when the main agent is on tmpfs, tmpfs when it is on disk).
 */
export const DIAGNOSTIC_KEYS = ['diag.quietlog', 'diag.otherfs'] as const;
export type DiagnosticKey = (typeof DIAGNOSTIC_KEYS)[number];
export type PlacementResults = Record<Series, Summary> & Partial<Record<`${DiagnosticKey}.acquire`, Summary>>;

export function diagnosticLabel(key: DiagnosticKey, mainOnDisk: boolean): string {
  if (key === 'diag.quietlog') return 'agent log level warn';
  return mainOnDisk ? 'lock+state dirs on tmpfs' : 'lock+state dirs on disk';
}

function ok(reply: Record<string, unknown>, what: string): void {
  if (reply['ok'] !== true) throw new Error(`${what} failed: ${JSON.stringify(reply)}`);
}

async function registeredLineClient(socketPath: string, name: string): Promise<LineClient> {
  const c = await LineClient.connect(socketPath);
  ok(await c.call(JSON.stringify({ v: PROTOCOL_VERSION, id: 0, method: 'register', params: { owner: { uuid: randomUUID(), name } } })), 'register');
  return c;
}

interface DiagAgent {
  key: DiagnosticKey;
  agent: BenchAgent;
  client: LineClient;
  dir: string;
}

export interface LatencyRigOptions {
  nodeFlags?: string[];
  logLevel?: string;
  /** Where the "other storage" diagnostic agent keeps its dirs (a fresh temp dir is made there). */
  otherStorageRoot: string;
}

/** The processes and connections every placement measures; started once, re-pinned per placement. */
export class LatencyRig implements AsyncDisposable {
  private constructor(
    readonly echo: ManagedProcess,
    readonly echoClient: LineClient,
    readonly agent: BenchAgent,
    readonly agentClient: AgentClient,
    readonly rawClient: LineClient,
    readonly diagnostics: DiagAgent[],
    readonly redisServer: RedisServer,
    readonly redis: LockRedis,
  ) {}

  static async start(dir: string, lockDir: string, opts: LatencyRigOptions): Promise<LatencyRig> {
    const echoPath = join(dir, 'echo.sock');
    const echo = await startLineServer('echo server', 'echo-server', [echoPath]);
    const echoClient = await LineClient.connect(echoPath);

    const agent = await BenchAgent.start({ dir, lockDir, ...(opts.nodeFlags ? { nodeFlags: opts.nodeFlags } : {}), ...(opts.logLevel ? { logLevel: opts.logLevel } : {}) });
    const agentClient = await agent.client();
    await agentClient.request('register', { owner: { uuid: randomUUID(), name: 'bench-vm' } });
    const rawClient = await registeredLineClient(agent.socketPath, 'bench-raw');

    const diagnostics: DiagAgent[] = [];
    for (const key of DIAGNOSTIC_KEYS) {
      const ddir = key === 'diag.otherfs' ? mkdtempSync(join(opts.otherStorageRoot, 'baton-bench-diag-')) : join(dir, key);
      mkdirSync(join(ddir, 'locks'), { recursive: true });
      const a = await BenchAgent.start({ dir: ddir, lockDir: join(ddir, 'locks'), logLevel: key === 'diag.quietlog' ? 'warn' : (opts.logLevel ?? 'info') });
      diagnostics.push({ key, agent: a, client: await registeredLineClient(a.socketPath, key), dir: ddir });
    }

    const redisServer = await RedisServer.start();
    const redis = new Redis({ host: '127.0.0.1', port: redisServer.port, lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 }) as LockRedis;
    await redis.connect();
    redis.defineCommand('releaseLock', { numberOfKeys: 1, lua: RELEASE_LUA });
    return new LatencyRig(echo, echoClient, agent, agentClient, rawClient, diagnostics, redisServer, redis);
  }

  place(p: Placement): void {
    pin(process.pid, p.client);
    for (const pid of [this.echo.pid, this.agent.pid, this.redisServer.pid!, ...this.diagnostics.map((d) => d.agent.pid)]) pin(pid, p.servers);
  }

  loops(): Loop[] {
    let id = 1;
    // The echo line is the raw client's acquire line, byte for byte (~90 bytes).
    const acquireLine = (name: string): string => JSON.stringify({ v: PROTOCOL_VERSION, id: id++, method: 'acquire', params: { resources: [{ name }] } });
    const releaseLine = (name: string): string => JSON.stringify({ v: PROTOCOL_VERSION, id: id++, method: 'release', params: { resources: [{ name }] } });
    const disk = 'disk-bench-00001';
    const rawDisk = 'disk-bench-00002';
    const resources = [{ name: disk }];
    const key = 'lock:disk-bench-00001';
    return [
      {
        name: 'echo',
        iteration: async (record) => {
          const t0 = nowUs();
          const reply = await this.echoClient.call(acquireLine(rawDisk));
          const t1 = nowUs();
          if (reply['method'] !== 'acquire') throw new Error('echo mismatch');
          record('echo', t1 - t0);
        },
      },
      {
        // The agent's protocol path alone (read, parse, validate, dispatch, reply), no lock work.
        name: 'hello (line client)',
        iteration: async (record) => {
          const t0 = nowUs();
          const reply = await this.rawClient.call(JSON.stringify({ v: PROTOCOL_VERSION, id: id++, method: 'hello', params: {} }));
          const t1 = nowUs();
          ok(reply, 'hello');
          record('raw.hello', t1 - t0);
        },
      },
      {
        name: 'grant (AgentClient)',
        iteration: async (record) => {
          const t0 = nowUs();
          await this.agentClient.request('acquire', { resources });
          const t1 = nowUs();
          await this.agentClient.request('release', { resources });
          const t2 = nowUs();
          record('grant.acquire', t1 - t0);
          record('grant.cycle', t2 - t0);
        },
      },
      {
        name: 'grant (line client)',
        iteration: async (record) => {
          const t0 = nowUs();
          const a = await this.rawClient.call(acquireLine(rawDisk));
          const t1 = nowUs();
          const r = await this.rawClient.call(releaseLine(rawDisk));
          const t2 = nowUs();
          ok(a, 'acquire');
          ok(r, 'release');
          record('raw.acquire', t1 - t0);
          record('raw.cycle', t2 - t0);
        },
      },
      {
        name: 'redlock (ioredis)',
        iteration: async (record) => {
          const t0 = nowUs();
          // Redlock's value: a random token per acquisition, so only its holder can release.
          const token = randomBytes(16).toString('hex');
          const got = await this.redis.set(key, token, 'PX', 30_000, 'NX');
          const t1 = nowUs();
          const released = await this.redis.releaseLock(key, token);
          const t2 = nowUs();
          if (got !== 'OK' || released !== 1) throw new Error(`redlock: set=${got} release=${released}`);
          record('redis.acquire', t1 - t0);
          record('redis.cycle', t2 - t0);
        },
      },
      ...this.diagnostics.map(
        (d): Loop => ({
          name: d.key,
          iteration: async (record) => {
            const t0 = nowUs();
            const a = await d.client.call(acquireLine(rawDisk));
            const t1 = nowUs();
            ok(a, `${d.key} acquire`);
            ok(await d.client.call(releaseLine(rawDisk)), `${d.key} release`);
            record(`${d.key}.acquire`, t1 - t0);
          },
        }),
      ),
    ];
  }

  async measure(p: Placement, opts: { n: number; rounds: number; warmup: number }): Promise<PlacementResults> {
    this.place(p);
    const samples = new Samples();
    await runInterleaved(this.loops(), { ...opts, chunkWarmup: 20 }, samples);
    const series = [...SERIES, ...this.diagnostics.map((d) => `${d.key}.acquire`)];
    return Object.fromEntries(series.map((s) => [s, samples.summary(s)])) as PlacementResults;
  }

  async close(): Promise<void> {
    this.redis.disconnect();
    await Promise.allSettled([this.echoClient.close(), this.agentClient.close(), this.rawClient.close(), ...this.diagnostics.map((d) => d.client.close())]);
    await Promise.allSettled([this.agent.shutdown(), ...this.diagnostics.map((d) => d.agent.shutdown())]);
    for (const d of this.diagnostics) if (d.key === 'diag.otherfs') rmSync(d.dir, { recursive: true, force: true });
    await Promise.allSettled([this.echo.close(), this.redisServer[Symbol.asyncDispose]()]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
