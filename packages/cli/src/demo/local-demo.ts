import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentClient, diskEpochs, LOCK_PROBE_ENTRY, readDiskRecords, SIM_VM_ENTRY } from '@baton/agent';
import { lockFileName } from '@baton/core';
import type { DemoChild } from './child.js';
import { connectWhenUp, say, step, until } from './wait.js';
import { DemoWorkspace, stopAgent } from './workspace.js';

const STEP_DEADLINE_MS = 15_000;

/**
 * The single-host story: one agent, two VMs that want one disk, an upgrade (re-exec) with the
 * lock held throughout, and a dead VM's lock released.
 */
export async function runLocalDemo(opts: { reexecs: number }): Promise<void> {
  await DemoWorkspace.run('demo', (ws) => story(ws, opts));
}

async function story(ws: DemoWorkspace, opts: { reexecs: number }): Promise<void> {
  const disk = ws.disk('web-01.qcow2');
  const deadline = (): AbortSignal => AbortSignal.timeout(STEP_DEADLINE_MS);

  say(`Baton demo: one host. Working directory ${ws.dir}`);
  const agent = await ws.startAgent('host-a', { owners: { termGraceMs: 1000 } }, deadline());
  const { socket, hello } = agent;
  const simVm = (name: string): DemoChild => ws.spawn([SIM_VM_ENTRY, '--socket', socket, '--uuid', randomUUID(), '--name', name, '--host', 'host-a', '--disk', disk]);
  let client = await connectWhenUp(socket, deadline());
  say(`agent on ${hello.host}: pid ${hello.pid}, ${hello.ofdLocks ? 'OFD' : 'POSIX'} locks on byte 0, metrics on 127.0.0.1:${hello.httpPort}`);

  step(1, 'VM "web-01" starts and locks its disk');
  const alpha = simVm('web-01');
  const running = await alpha.event((e) => e.event === 'running' || e.event === 'refused', deadline());
  if (running.event !== 'running') throw new Error(`web-01 did not start: ${JSON.stringify(running)}`);
  const alphaGrant = (running.grants as { token: number; lockPath: string }[])[0]!;
  say(`   granted: token ${alphaGrant.token}, lock file ${alphaGrant.lockPath}`);

  step(2, 'VM "web-01-clone" wants the same disk');
  const beta = simVm('web-01-clone');
  const refused = await beta.event((e) => e.event === 'refused' || e.event === 'running', deadline());
  say(`   ${refused.event === 'refused' ? `refused: ${String(refused.code)}: ${String(refused.message)}` : 'UNEXPECTED: it was granted'}`);

  step(3, `The agent is upgraded in place ${opts.reexecs} times (SIGUSR1 → re-exec), while another process probes the lock`);
  const probe = ws.spawn([LOCK_PROBE_ENTRY, '--path', join(ws.locks, lockFileName(disk)), '--op', 'probe']);
  await probe.event((e) => e.event === 'probing', deadline());
  await client.close();
  for (let i = 1; i <= opts.reexecs; i++) {
    agent.child.proc.kill('SIGUSR1');
    const signal = deadline();
    const h = await until(async (s) => {
      await using c = await AgentClient.connect({ socketPath: socket, signal: s });
      const answer = await c.request('hello', undefined, { signal: s });
      return answer.generation >= i && answer;
    }, signal);
    say(`   re-exec ${i}: same pid ${h.pid}, generation ${h.generation}`);
  }
  probe.proc.kill('SIGTERM');
  const summary = await probe.event((e) => e.event === 'summary', deadline());
  say(`   an outside process tried to take the lock ${String(summary.attempts)} times during the upgrades: granted ${String(summary.granted)} times`);

  client = await connectWhenUp(socket, deadline());
  const { locks: held } = await client.request('locks');
  for (const l of held) say(`   still held: ${l.resource} (${l.mode}) by ${l.owner.name}, pid ${l.owner.pid}, token ${l.token}`);

  step(4, 'VM "web-01" dies (SIGKILL): its connection closes, the agent releases its disk');
  await alpha.kill('SIGKILL');
  await until(async (signal) => (await client.request('locks', undefined, { signal })).locks.length === 0, deadline());
  say('   released');

  step(5, 'VM "web-01-clone" starts again and gets the disk, with a higher token');
  const gamma = simVm('web-01-clone');
  const second = await gamma.event((e) => e.event === 'running' || e.event === 'refused', deadline());
  const gammaToken = second.event === 'running' ? (second.grants as { token: number }[])[0]!.token : undefined;
  say(`   ${second.event}: token ${gammaToken} (was ${alphaGrant.token})`);
  await until(async () => readFileSync(disk, 'utf8').includes('web-01-clone'), deadline());
  await gamma.kill('SIGKILL');

  say('\nWho wrote to the disk, in order:');
  for (const e of diskEpochs(readDiskRecords(disk)).epochs) say(`   ${e.vm} (token ${e.token}): ${e.writes} records`);
  await client.close();
  await stopAgent(agent, deadline());
  say('\ndemo finished');
}
