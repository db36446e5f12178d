import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { AgentClient } from '@baton/agent';
import { BatonError, MAX_LINE_BYTES } from '@baton/core';
import { RawAgentSocket } from '../support/agent-io.js';
import { AgentProcess, SharedStorage, startProbe, startSimVm } from '../support/index.js';

/** 50 in `npm test`; `npm run soak` raises it. */
const REEXECS = Number(process.env.BATON_SOAK_REEXECS ?? 50);

/**
 * seed 001: the agent re-executes itself on SIGUSR1 (an upgrade) and no lock is unheld for an
 * instant. An outside process probes byte 0 of a VM's lock file the whole time; a client keeps
 * acquiring and releasing; the VM keeps writing.
 */
describe('re-exec under load', () => {
  it(`keeps every lock, connection and acknowledged request through ${REEXECS} consecutive re-execs`, async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const disk = storage.image('vm.img');
    await using vm = await startSimVm(agent, { uuid: randomUUID(), name: 'vm', disks: [disk] });
    const running = await vm.event((e) => e.event === 'running', 'vm running');
    const lockPath = (running.grants as { lockPath: string }[])[0]!.lockPath;
    await using probe = await startProbe(lockPath, ['--op', 'probe', '--interval-us', '100']);
    await probe.event((e) => e.event === 'probing', 'probe started');

    // The client's own record of what the agent acknowledged: the truth to compare at the end.
    const client: AgentClient = await agent.client();
    await client.request('register', { owner: { uuid: randomUUID(), name: 'churn' } });
    const held = new Set<string>();
    let acknowledged = 0;
    let stop = false;
    const churn = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `res-${i % 8}`;
        if (held.has(name)) {
          await client.request('release', { resources: [{ name }] });
          held.delete(name);
        } else {
          await client.request('acquire', { resources: [{ name }] });
          held.add(name);
        }
        acknowledged++;
      }
    })();

    const generations: number[] = [];
    try {
      for (let i = 0; i < REEXECS; i++) generations.push(await agent.reexec());
    } finally {
      stop = true;
      await churn;
    }

    expect(generations).toEqual(Array.from({ length: REEXECS }, (_, i) => i + 1));
    expect(acknowledged).toBeGreaterThan(REEXECS);
    // The client never lost its connection: the same owner still holds exactly what was acknowledged.
    const state = await client.request('inquire', {});
    expect(state.locks.map((g) => g.resource).sort()).toEqual([...held].sort());

    process.kill(probe.pid, 'SIGTERM');
    const summary = await probe.event((e) => e.event === 'summary', 'probe summary');
    expect(summary.attempts as number).toBeGreaterThan(1000);
    expect(summary.granted).toBe(0);

    // The VM kept its connection (it would have stopped writing) and its lock.
    expect(vm.events().some((e) => e.event === 'agent-connection-lost')).toBe(false);
    const admin = await agent.client();
    const { locks } = await admin.request('locks');
    expect(locks.find((l) => l.resource === disk)?.owner.name).toBe('vm');
    expect(locks).toHaveLength(1 + held.size);
  }, 120_000 + REEXECS * 1000);

  it('refuses new work while re-executing rather than losing it, and resumes with the same tokens', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name: 'vm' } });
    const before = (await c.request('acquire', { resources: [{ name: 'a' }] })).grants[0]!.token;
    await agent.reexec();
    const after = (await c.request('acquire', { resources: [{ name: 'b' }] })).grants[0]!.token;
    // The counter continues where the old image stopped: no reservation block is skipped.
    expect(after).toBe(before + 1);
    await expect(c.request('acquire', { resources: [{ name: 'a' }] })).rejects.toBeInstanceOf(BatonError);
  });

  it('carries a half-received line, and the rest of an oversized one already answered, across a re-exec', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    await using raw = await RawAgentSocket.connect(agent.socketPath);
    const hello = (id: number): string => JSON.stringify({ v: 1, id, method: 'hello', params: {} });
    // Half a request, then the image changes, then the other half: one request, answered once.
    raw.write(hello(1).slice(0, 20));
    await agent.reexec();
    raw.write(hello(1).slice(20) + '\n');
    expect(await raw.next()).toMatchObject({ id: 1, ok: true });
    // An oversized line, answered LINE_TOO_LONG as soon as it is one; its rest arrives after a
    // re-exec and is discarded up to its newline, not read as a request of its own.
    raw.write('{"v":1,"id":2,"method":"hello","params":{},"pad":"' + 'x'.repeat(MAX_LINE_BYTES));
    expect(await raw.next()).toMatchObject({ id: null, ok: false, error: { code: 'LINE_TOO_LONG' } });
    await agent.reexec();
    raw.write('x'.repeat(1000) + '"}\n' + hello(3) + '\n');
    expect(await raw.next()).toMatchObject({ id: 3, ok: true });
  });
});
