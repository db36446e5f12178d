import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AgentClient, LOCK_PROBE_ENTRY, SIM_VM_ENTRY, type AgentConfigInput } from '@baton/agent';
import { lockFileName } from '@baton/core';
import { DemoChild } from './child.js';

const CLI_ENTRY = fileURLToPath(new URL('../main.js', import.meta.url));
const STEP_DEADLINE_MS = 15_000;

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

function step(n: number, text: string): void {
  say(process.stdout.isTTY ? `\n\x1b[1m${n}. ${text}\x1b[0m` : `\n${n}. ${text}`);
}

/**
 * Ask `probe` every 20 ms until it answers something other than false, or the signal aborts.
 * A probe that throws is asked again: the thing it asks about is not there yet.
 */
async function until<T>(probe: () => Promise<T | false>, signal: AbortSignal): Promise<T> {
  for (;;) {
    signal.throwIfAborted();
    try {
      const answer = await probe();
      if (answer !== false) return answer;
    } catch {
      // not yet
    }
    await sleep(20, undefined, { signal });
  }
}

/** The agent is not listening while it starts, nor for a few milliseconds of each re-exec. */
function connectWhenUp(socketPath: string, signal: AbortSignal): Promise<AgentClient> {
  return until(() => AgentClient.connect({ socketPath, signal }), signal);
}

function simVm(socket: string, name: string, disk: string): DemoChild {
  return new DemoChild([SIM_VM_ENTRY, '--socket', socket, '--uuid', randomUUID(), '--name', name, '--host', 'host-a', '--disk', disk]);
}

/**
 * The single-host story: one agent, two VMs that want one disk, an upgrade (re-exec) with the
 * lock held throughout, and a dead VM's lock released.
 */
export async function runLocalDemo(opts: { reexecs: number }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'baton-demo-'));
  const images = join(dir, 'images');
  const locks = join(dir, 'locks');
  mkdirSync(images);
  mkdirSync(locks);
  const disk = join(images, 'web-01.qcow2');
  writeFileSync(disk, '');
  const socket = join(dir, 'agent.sock');
  const config: AgentConfigInput = {
    hostId: 'host-a',
    stateDir: join(dir, 'state'),
    socket: { path: socket },
    http: { host: '127.0.0.1', port: 0 },
    lockspaces: [{ name: 'images', kind: 'indirect', dir: locks, roots: [images] }],
    owners: { termGraceMs: 1000 },
    logLevel: 'warn',
  };
  writeFileSync(join(dir, 'agent.json'), JSON.stringify(config, null, 2));
  const deadline = (): AbortSignal => AbortSignal.timeout(STEP_DEADLINE_MS);

  say(`Baton demo: one host. Working directory ${dir}`);
  await using agent = new DemoChild([CLI_ENTRY, 'agent', '--config', join(dir, 'agent.json')]);
  let client = await connectWhenUp(socket, deadline());
  const hello = await client.request('hello');
  say(`agent on ${hello.host}: pid ${hello.pid}, ${hello.ofdLocks ? 'OFD' : 'POSIX'} locks on byte 0, metrics on 127.0.0.1:${hello.httpPort}`);

  step(1, 'VM "web-01" starts and locks its disk');
  await using alpha = simVm(socket, 'web-01', disk);
  const running = await alpha.event((e) => e.event === 'running' || e.event === 'refused', deadline());
  if (running.event !== 'running') throw new Error(`web-01 did not start: ${JSON.stringify(running)}`);
  const alphaGrant = (running.grants as { token: number; lockPath: string }[])[0]!;
  say(`   granted: token ${alphaGrant.token}, lock file ${alphaGrant.lockPath}`);

  step(2, 'VM "web-01-clone" wants the same disk');
  await using beta = simVm(socket, 'web-01-clone', disk);
  const refused = await beta.event((e) => e.event === 'refused' || e.event === 'running', deadline());
  say(`   ${refused.event === 'refused' ? `refused: ${String(refused.code)}: ${String(refused.message)}` : 'UNEXPECTED: it was granted'}`);

  step(3, `The agent is upgraded in place ${opts.reexecs} times (SIGUSR1 → re-exec), while another process probes the lock`);
  await using probe = new DemoChild([LOCK_PROBE_ENTRY, '--path', join(locks, lockFileName(disk)), '--op', 'probe']);
  await probe.event((e) => e.event === 'probing', deadline());
  await client.close();
  for (let i = 1; i <= opts.reexecs; i++) {
    agent.proc.kill('SIGUSR1');
    const signal = deadline();
    const h = await until(async () => {
      await using c = await AgentClient.connect({ socketPath: socket, signal });
      const answer = await c.request('hello');
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
  await until(async () => (await client.request('locks')).locks.length === 0, deadline());
  say('   released');

  step(5, 'VM "web-01-clone" starts again and gets the disk, with a higher token');
  await using gamma = simVm(socket, 'web-01-clone', disk);
  const second = await gamma.event((e) => e.event === 'running' || e.event === 'refused', deadline());
  const gammaToken = second.event === 'running' ? (second.grants as { token: number }[])[0]!.token : undefined;
  say(`   ${second.event}: token ${gammaToken} (was ${alphaGrant.token})`);
  await until(async () => readFileSync(disk, 'utf8').includes('web-01-clone'), deadline());
  await gamma.kill('SIGKILL');

  const writers = new Map<string, number>();
  for (const line of readFileSync(disk, 'utf8').split('\n').filter(Boolean)) {
    const [vm, , token] = line.split(' ');
    writers.set(`${vm} (token ${token})`, (writers.get(`${vm} (token ${token})`) ?? 0) + 1);
  }
  say('\nWho wrote to the disk, in order:');
  for (const [who, n] of writers) say(`   ${who}: ${n} records`);
  await client.close();

  // Refused (LOCKS_HELD) until the last VM's lock is released, a moment after its process is gone.
  await until(async () => {
    await using c = await AgentClient.connect({ socketPath: socket });
    return c.request('shutdown', { releaseAll: false });
  }, deadline());
  await agent.exited;
  rmSync(dir, { recursive: true, force: true });
  say('\ndemo finished');
}
