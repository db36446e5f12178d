// Dead-host reclaim for the cluster section: how long a dead host's disks stay unavailable.
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { BatonError, leaseTiming } from '@baton/core';
import type { EtcdServer } from '../support/index.js';
import { BenchAgent } from './agent-host.js';
import { nowUs, summarize, type Summary } from './stats.js';

export interface ReclaimResult {
  ttlSeconds: number;
  keepaliveMs: number;
  pollMs: number;
  trials: number;
  /** SIGKILL of host A's agent → host B's acquire answered with a grant, in µs. */
  summary: Summary;
  samplesMs: number[];
  /** Refused polls (RESOURCE_BUSY) before each win. */
  refusals: number[];
  /** Other errors seen while polling. */
  otherErrors: string[];
  /** B's token is above A's in every trial (S2). */
  tokensIncrease: boolean;
}

/**
 * Dead-host reclaim: host A's agent holds a lease for a connected owner; A is SIGKILLed at a random
 * point of its keepalive period; host B's agent retries the acquire every `pollMs` until etcd has
 * expired A's session and B is granted the resource. Both agents have their own lock directory,
 * so only etcd stands between them (as in the two-host integration test).
 */
export async function measureReclaim(etcd: EtcdServer, dir: string, opts: { trials: number; ttlSeconds: number; pollMs: number; logLevel?: string }): Promise<ReclaimResult> {
  const cluster = 'reclaim';
  const etcdCfg = { endpoints: etcd.endpoints, cluster, ttlSeconds: opts.ttlSeconds };
  const timing = leaseTiming(opts.ttlSeconds);
  const start = (name: string, hostId: string): Promise<BenchAgent> => {
    mkdirSync(join(dir, name, 'locks'), { recursive: true });
    return BenchAgent.start({ dir: join(dir, name), lockDir: join(dir, name, 'locks'), hostId, etcd: etcdCfg, ...(opts.logLevel ? { logLevel: opts.logLevel } : {}) });
  };
  const b = await start('host-b', 'host-b');
  const cb = await b.client();
  const samplesUs: number[] = [];
  const refusals: number[] = [];
  const otherErrors: string[] = [];
  let tokensIncrease = true;
  try {
    await cb.request('register', { owner: { uuid: randomUUID(), name: 'vm-on-b' } });
    for (let t = 0; t < opts.trials; t++) {
      const resources = [{ name: `disk-reclaim-${t}` }];
      const a = await start(`host-a-${t}`, 'host-a');
      let tokenA = 0;
      try {
        const ca = await a.client();
        await ca.request('register', { owner: { uuid: randomUUID(), name: 'vm-on-a' } });
        tokenA = (await ca.request('acquire', { resources })).grants[0]!.token;
        const refused = await cb.request('acquire', { resources }).then(
          () => 'granted',
          (err: unknown) => (err instanceof BatonError ? err.code : String(err)),
        );
        if (refused !== 'RESOURCE_BUSY') throw new Error(`host B's acquire while A holds the lease: ${refused}, expected RESOURCE_BUSY`);
        // Land the kill anywhere in A's keepalive period.
        await delay(Math.random() * timing.keepaliveMs);
        const t0 = nowUs();
        a.proc.kill('SIGKILL');
        let n = 0;
        for (;;) {
          try {
            const { grants } = await cb.request('acquire', { resources });
            samplesUs.push(nowUs() - t0);
            if (!(grants[0]!.token > tokenA)) tokensIncrease = false;
            break;
          } catch (err) {
            if (err instanceof BatonError && err.code === 'RESOURCE_BUSY') n++;
            else otherErrors.push(err instanceof Error ? err.message : String(err));
            if (nowUs() - t0 > 10 * opts.ttlSeconds * 1e6) throw new Error(`host B still refused ${10 * opts.ttlSeconds} s after host A was killed`);
            await delay(opts.pollMs);
          }
        }
        refusals.push(n);
        await cb.request('release', { resources });
        await ca.close().catch(() => undefined);
      } finally {
        await a.close();
      }
    }
  } finally {
    await cb.close().catch(() => undefined);
    await b.shutdown();
  }
  return {
    ttlSeconds: opts.ttlSeconds,
    keepaliveMs: timing.keepaliveMs,
    pollMs: opts.pollMs,
    trials: opts.trials,
    summary: summarize(samplesUs),
    samplesMs: samplesUs.map((us) => Math.round(us / 1000)),
    refusals,
    otherErrors,
    tokensIncrease,
  };
}

