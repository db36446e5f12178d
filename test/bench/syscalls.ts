// What one grant costs the agent in system calls, counted with `strace -c` (untimed: ptrace
// slows every call). It is how the benchmark checks "a token persisted per grant must not cost an
// fsync per grant": the fsync count over many acquire+release cycles.
import { existsSync, readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { PROTOCOL_VERSION } from '@baton/core';
import { ManagedProcess, waitFor } from '../support/index.js';
import type { BenchAgent } from './agent-host.js';
import { LineClient } from './line-client.js';

export interface SyscallResult {
  cycles: number;
  /** Calls per acquire+release cycle, by syscall, most frequent first. */
  perCycle: Record<string, number>;
  totalPerCycle: number;
  fsyncs: number;
  fsyncPerGrant: number;
}

const STRACE = ['/usr/bin/strace', '/bin/strace'].find((p) => existsSync(p));

export function straceAvailable(): boolean {
  return STRACE !== undefined;
}

/** Parses `strace -c` output: "% time seconds usecs/call calls [errors] syscall". */
function parseSummary(text: string): Map<string, number> {
  const calls = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$/.exec(line);
    if (m && m[2] !== 'total') calls.set(m[2]!, Number(m[1]));
  }
  return calls;
}

export async function countSyscalls(agent: BenchAgent, dir: string, cycles: number): Promise<SyscallResult> {
  if (!STRACE) throw new Error('strace is not installed (apt-get install strace)');
  const out = join(dir, 'strace.txt');
  await using client = await LineClient.connect(agent.socketPath);
  const reg = await client.call(JSON.stringify({ v: PROTOCOL_VERSION, id: 0, method: 'register', params: { owner: { uuid: randomUUID(), name: 'bench-strace' } } }));
  if (reg['ok'] !== true) throw new Error(`register failed: ${JSON.stringify(reg)}`);
  const acquire = JSON.stringify({ v: PROTOCOL_VERSION, id: 1, method: 'acquire', params: { resources: [{ name: 'disk-strace' }] } });
  const release = JSON.stringify({ v: PROTOCOL_VERSION, id: 2, method: 'release', params: { resources: [{ name: 'disk-strace' }] } });

  const strace = await ManagedProcess.spawn({ name: 'strace', command: STRACE, args: ['-f', '-c', '-o', out, '-p', String(agent.pid)] });
  try {
    await waitFor(() => strace.output().includes('attached'), { what: 'strace to attach to the agent', deadlineMs: 10_000, intervalMs: 5 });
    for (let i = 0; i < cycles; i++) {
      const a = await client.call(acquire);
      const r = await client.call(release);
      if (a['ok'] !== true || r['ok'] !== true) throw new Error(`cycle ${i} failed: ${JSON.stringify(a)} ${JSON.stringify(r)}`);
    }
  } finally {
    strace.signal('SIGINT');
    await Promise.race([strace.exited, new Promise((r) => setTimeout(r, 5_000))]);
    await strace.close();
  }
  const calls = parseSummary(readFileSync(out, 'utf8'));
  const fsyncs = (calls.get('fsync') ?? 0) + (calls.get('fdatasync') ?? 0) + (calls.get('sync_file_range') ?? 0);
  const perCycle = Object.fromEntries([...calls].sort((a, b) => b[1] - a[1]).map(([name, n]) => [name, Math.round((n / cycles) * 100) / 100]));
  const total = [...calls.values()].reduce((a, b) => a + b, 0);
  return { cycles, perCycle, totalPerCycle: total / cycles, fsyncs, fsyncPerGrant: fsyncs / cycles };
}
