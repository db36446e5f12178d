import { randomUUID } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AgentProcess, SharedStorage, tryLockFrom, waitFor } from '../support/index.js';

/**
 * A re-executed image that cannot trust what it inherited must refuse it without dropping
 * anything: here one lock file is replaced behind the agent's back, so the descriptor it holds no
 * longer matches the path. The new image refuses the whole state (never half-loaded), keeps every
 * inherited descriptor (the other lock stays held), grants nothing, and says why.
 */
describe('re-exec with state that cannot be adopted', () => {
  it('goes degraded: every inherited lock stays held, no new lock is granted, /readyz says why', async () => {
    await using storage = await SharedStorage.create();
    await using agent = await AgentProcess.start({ storage });
    const c = await agent.client();
    await c.request('register', { owner: { uuid: randomUUID(), name: 'vm' } });
    const { grants } = await c.request('acquire', { resources: [{ name: storage.image('kept.img') }, { name: storage.image('replaced.img') }] });
    const [kept, replaced] = grants.map((g) => g.lockPath) as [string, string];
    writeFileSync(`${replaced}.new`, '');
    renameSync(`${replaced}.new`, replaced);

    process.kill(agent.pid, 'SIGUSR1');
    const fatal = await agent.json.event((e) => e.code === 'STATE_INVALID' && e.level === 60, 'refused state logged');
    expect(String(fatal.msg)).toContain('no lock is dropped');

    expect(await tryLockFrom(kept)).toBe('busy');
    const admin = await agent.client();
    await expect(admin.request('register', { owner: { uuid: randomUUID(), name: 'new' } })).resolves.toBeDefined();
    await expect(admin.request('acquire', { resources: [{ name: storage.image('other.img') }] })).rejects.toMatchObject({ code: 'STATE_INVALID' });
    const { httpPort } = await admin.request('hello');
    const ready = await waitFor(async () => {
      const res = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      return res.status === 503 ? ((await res.json()) as { reason: string }) : false;
    }, { what: 'readyz to report degraded', deadlineMs: 5000 });
    expect(ready.reason).toContain('degraded');
  });
});
