// One agent holding 10,000 locks: its memory per lock, and a re-exec (SIGUSR1) that adopts them.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AgentClient } from '@baton/agent';
import { PROTOCOL_VERSION } from '@baton/core';
import { BenchAgent } from './agent-host.js';
import { LineClient } from './line-client.js';
import { nowUs, summarize, type Summary } from './stats.js';
import { ofdLockCount, openFds, settledRss, statusBytes } from './sys.js';

export interface MemoryResult {
  locks: number;
  owners: number;
  /** RSS of the idle agent right after start. */
  rssIdle: number;
  /** With the owners registered and warmed up, before the locks. */
  rssBefore: number;
  rssHalf: number;
  rssAfter: number;
  rssAnonBefore: number;
  rssAnonAfter: number;
  bytesPerLock: number;
  /** Between 5,000 and 10,000 locks: the cost of one more lock once the heap has grown. */
  marginalBytesPerLock: number;
  settled: boolean;
  acquireSeconds: number;
}

export interface ReexecResult {
  runs: number;
  /** SIGUSR1 → `hello` answered by the new image, in µs. */
  summary: Summary;
  samplesMs: number[];
  generations: number[];
  locksAfter: number;
  fdsAfter: number;
  ofdLocksAfter: number;
  /** The pid stayed the same across every re-exec (checked on each `hello`). */
  samePid: boolean;
  /** RSS of the re-executed image (fresh heap, same 10,000 locks) over the idle agent's, per lock. */
  bytesPerLockAfterReexec: number;
  /** Size of the `locks` reply line: what a client must accept to list 10,000 locks. */
  locksReplyBytes: number;
  /**
   * Per run, from the agent's log (ms resolution): SIGUSR1 → "re-executing" (flush, snapshot, state
   * file written and fsynced), → "agent re-executed" (execve, Node start, modules, state parsed,
   * descriptors verified and adopted), → `hello` answered.
   */
  phasesMs: { snapshot: number; boot: number; firstReply: number }[];
}

function reexecPhases(logPath: string, kills: readonly number[], replies: readonly number[]): ReexecResult['phasesMs'] {
  const events = readFileSync(logPath, 'utf8')
    .split('\n')
    .flatMap((l) => {
      try {
        return l.startsWith('{') ? [JSON.parse(l) as { msg?: string; time?: string }] : [];
      } catch {
        return [];
      }
    });
  const at = (prefix: string): number[] => events.filter((e) => e.msg?.startsWith(prefix) && e.time).map((e) => Date.parse(e.time!));
  const leaving = at('re-executing');
  const arrived = at('agent re-executed');
  return kills.map((k, i) => ({
    snapshot: (leaving[i] ?? Number.NaN) - k,
    boot: (arrived[i] ?? Number.NaN) - (leaving[i] ?? Number.NaN),
    firstReply: replies[i]! - (arrived[i] ?? Number.NaN),
  }));
}

function maxOpenFiles(): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return m?.[1] === 'unlimited' ? Infinity : Number(m?.[1] ?? 0);
}

async function locksHeld(control: LineClient): Promise<{ count: number; bytes: number }> {
  const line = await control.request(JSON.stringify({ v: PROTOCOL_VERSION, id: 'locks', method: 'locks', params: {} }));
  const reply = JSON.parse(line) as { ok: boolean; result?: { locks: unknown[] } };
  if (!reply.ok || !reply.result) throw new Error(`locks failed: ${line.slice(0, 300)}`);
  return { count: reply.result.locks.length, bytes: Buffer.byteLength(line) + 1 };
}

export async function measureScale(
  dir: string,
  lockDir: string,
  opts: { owners: number; perOwner: number; reexecRuns: number; logLevel?: string },
): Promise<{ memory: MemoryResult; reexec: ReexecResult }> {
  const total = opts.owners * opts.perOwner;
  if (maxOpenFiles() < total + opts.owners + 200) {
    throw new Error(`ulimit -n is ${maxOpenFiles()}: ${total} locks need one descriptor each (raise it to ${total + opts.owners + 200})`);
  }
  await using agent = await BenchAgent.start({ dir, lockDir, ...(opts.logLevel ? { logLevel: opts.logLevel } : {}) });
  const rssIdle = (await settledRss(agent.pid)).rss;

  const owners: AgentClient[] = [];
  let control: LineClient | undefined;
  let helloClient: AgentClient | undefined;
  try {
    for (let i = 0; i < opts.owners; i++) {
      const c = await agent.client();
      owners.push(c);
      await c.request('register', { owner: { uuid: randomUUID(), name: `vm-${String(i).padStart(3, '0')}` } });
    }
    control = await LineClient.connect(agent.socketPath);
    helloClient = await agent.client();

    // Warm-up: compile the grant path and let the young generation reach its working size, with
    // a few hundred locks at a time so the old generation is not pre-grown for 10,000.
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < Math.min(10, opts.owners); i++) {
        const resources = Array.from({ length: opts.perOwner }, (_, j) => ({ name: `warm-${i}-${j}` }));
        await owners[i]!.request('acquire', { resources });
        await owners[i]!.request('release', { resources });
      }
    }
    const before = await settledRss(agent.pid);
    const rssAnonBefore = statusBytes(agent.pid, 'RssAnon');

    let rssHalf = 0;
    const t0 = performance.now();
    for (let i = 0; i < opts.owners; i++) {
      // ≤ 128 resources per request (the protocol's limit): perOwner is 100.
      const resources = Array.from({ length: opts.perOwner }, (_, j) => ({ name: `disk-${String(i * opts.perOwner + j).padStart(5, '0')}` }));
      const { grants } = await owners[i]!.request('acquire', { resources });
      if (grants.length !== opts.perOwner) throw new Error(`owner ${i} got ${grants.length} grants`);
      if (i === Math.floor(opts.owners / 2) - 1) rssHalf = (await settledRss(agent.pid)).rss;
    }
    const acquireSeconds = (performance.now() - t0) / 1000;
    const after = await settledRss(agent.pid);
    const rssAnonAfter = statusBytes(agent.pid, 'RssAnon');
    const held = await locksHeld(control);
    if (held.count !== total) throw new Error(`expected ${total} locks held, the agent lists ${held.count}`);

    const memory: MemoryResult = {
      locks: total,
      owners: opts.owners,
      rssIdle,
      rssBefore: before.rss,
      rssHalf,
      rssAfter: after.rss,
      rssAnonBefore,
      rssAnonAfter,
      bytesPerLock: (after.rss - before.rss) / total,
      marginalBytesPerLock: (after.rss - rssHalf) / (total - Math.floor(opts.owners / 2) * opts.perOwner),
      settled: before.settled && after.settled,
      acquireSeconds,
    };

    // Re-exec: SIGUSR1, then `hello` on an open connection until the new image answers it. A hello
    // sent while the old image is pausing waits in the socket and is answered by the new one.
    const samplesUs: number[] = [];
    const generations: number[] = [];
    const kills: number[] = [];
    const replies: number[] = [];
    for (let r = 0; r < opts.reexecRuns; r++) {
      const { generation: prev } = await helloClient.request('hello');
      const deadline = AbortSignal.timeout(30_000);
      kills.push(Date.now());
      const t = nowUs();
      process.kill(agent.pid, 'SIGUSR1');
      for (;;) {
        const h = await helloClient.request('hello', {}, { signal: deadline });
        if (h.generation > prev) {
          samplesUs.push(nowUs() - t);
          replies.push(Date.now());
          generations.push(h.generation);
          if (h.pid !== agent.pid) throw new Error(`the agent's pid changed across re-exec: ${agent.pid} → ${h.pid}`);
          break;
        }
      }
    }
    const afterReexec = await locksHeld(control);
    const rssReexec = (await settledRss(agent.pid)).rss;
    const reexec: ReexecResult = {
      runs: opts.reexecRuns,
      summary: summarize(samplesUs),
      samplesMs: samplesUs.map((us) => Math.round(us / 100) / 10),
      generations,
      locksAfter: afterReexec.count,
      fdsAfter: openFds(agent.pid),
      ofdLocksAfter: ofdLockCount(),
      samePid: true,
      bytesPerLockAfterReexec: (rssReexec - rssIdle) / total,
      locksReplyBytes: afterReexec.bytes,
      phasesMs: reexecPhases(agent.logPath, kills, replies),
    };
    return { memory, reexec };
  } finally {
    await Promise.allSettled([...owners.map((c) => c.close()), control?.close(), helloClient?.close()]);
    await agent.shutdown();
  }
}
