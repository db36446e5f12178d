import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AgentClient } from '@baton/agent';
import { BatonError, type LockMode } from '@baton/core';
import { AgentProcess, SharedStorage, waitFor } from '../support/index.js';

/**
 * Model-based test: random sequences of connect, register, acquire, release, disconnect and
 * re-exec against a real agent process; after every step the agent's lock table equals a model
 * written here from the rules alone (virtlockd's semantics, not the agent's code).
 */
const SLOTS = 3;
const OWNERS = ['11111111-1111-4111-8111-111111111111', '22222222-2222-4222-8222-222222222222', '33333333-3333-4333-8333-333333333333', '44444444-4444-4444-8444-444444444444'];
const RESOURCES = ['r0', 'r1', 'r2', 'r3'];
/** 25 in `npm test`; `npm run soak` raises it. */
const RUNS = Number(process.env.BATON_SOAK_MODEL_RUNS ?? 25);

interface Model {
  /** Per connection slot: closed (null), or open with the owner it registered. */
  conns: ({ owner: string | null } | null)[];
  /** Owner → resource → mode. */
  owners: Map<string, Map<string, LockMode>>;
  lastToken: Map<string, number>;
}

interface Real {
  agent: AgentProcess;
  clients: (AgentClient | null)[];
  admin: AgentClient;
}

type Outcome = 'ok' | string;

async function outcome(p: Promise<unknown>): Promise<{ code: Outcome; value: unknown }> {
  try {
    return { code: 'ok', value: await p };
  } catch (err) {
    if (err instanceof BatonError) return { code: err.code, value: undefined };
    throw err;
  }
}

async function assertSameTable(m: Model, r: Real): Promise<void> {
  const { locks } = await r.admin.request('locks');
  const actual = locks.map((l) => `${l.resource}:${l.mode}:${l.owner.uuid}`).sort();
  const expected = [...m.owners].flatMap(([owner, held]) => [...held].map(([res, mode]) => `${res}:${mode}:${owner}`)).sort();
  expect(actual).toEqual(expected);
}

type Cmd = fc.AsyncCommand<Model, Real>;

class Connect implements Cmd {
  constructor(readonly slot: number) {}
  check(m: Readonly<Model>): boolean {
    return m.conns[this.slot] === null;
  }
  async run(m: Model, r: Real): Promise<void> {
    r.clients[this.slot] = await r.agent.client();
    m.conns[this.slot] = { owner: null };
  }
  toString(): string {
    return `connect(${this.slot})`;
  }
}

class Register implements Cmd {
  constructor(
    readonly slot: number,
    readonly owner: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.conns[this.slot] !== null;
  }
  async run(m: Model, r: Real): Promise<void> {
    const conn = m.conns[this.slot]!;
    const uuid = OWNERS[this.owner]!;
    const expected = conn.owner !== null || m.owners.has(uuid) ? 'ALREADY_REGISTERED' : 'ok';
    const got = await outcome(r.clients[this.slot]!.request('register', { owner: { uuid, name: `o${this.owner}` } }));
    expect(got.code).toBe(expected);
    if (expected === 'ok') {
      conn.owner = uuid;
      m.owners.set(uuid, new Map());
    }
    await assertSameTable(m, r);
  }
  toString(): string {
    return `register(${this.slot}, o${this.owner})`;
  }
}

class Acquire implements Cmd {
  constructor(
    readonly slot: number,
    readonly resources: number[],
    readonly mode: LockMode,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.conns[this.slot] !== null;
  }
  async run(m: Model, r: Real): Promise<void> {
    const me = m.conns[this.slot]!.owner;
    const names = this.resources.map((i) => RESOURCES[i]!);
    let expected: Outcome = 'ok';
    if (me === null) expected = 'NOT_REGISTERED';
    else {
      for (const name of names) {
        const holders = [...m.owners].filter(([, held]) => held.has(name));
        const conflict = holders.some(([o, held]) => o === me || this.mode === 'exclusive' || held.get(name) === 'exclusive');
        if (conflict) expected = 'RESOURCE_BUSY';
      }
    }
    const got = await outcome(r.clients[this.slot]!.request('acquire', { resources: names.map((name) => ({ name, mode: this.mode })) }));
    expect(got.code).toBe(expected);
    if (expected === 'ok') {
      const { grants } = got.value as { grants: { resource: string; token: number }[] };
      for (const g of grants) {
        // Every grant's token exceeds every earlier token of that resource (S2).
        expect(g.token).toBeGreaterThan(m.lastToken.get(g.resource) ?? 0);
        m.lastToken.set(g.resource, g.token);
      }
      for (const name of names) m.owners.get(me!)!.set(name, this.mode);
    }
    await assertSameTable(m, r);
  }
  toString(): string {
    return `acquire(${this.slot}, [${this.resources.map((i) => RESOURCES[i]).join(',')}], ${this.mode})`;
  }
}

class Release implements Cmd {
  constructor(
    readonly slot: number,
    readonly resource: number | null,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.conns[this.slot] !== null;
  }
  async run(m: Model, r: Real): Promise<void> {
    const me = m.conns[this.slot]!.owner;
    const name = this.resource === null ? null : RESOURCES[this.resource]!;
    const expected = me === null ? 'NOT_REGISTERED' : name !== null && !m.owners.get(me)!.has(name) ? 'NOT_HELD' : 'ok';
    const got = await outcome(r.clients[this.slot]!.request('release', name === null ? {} : { resources: [{ name }] }));
    expect(got.code).toBe(expected);
    if (expected === 'ok') {
      if (name === null) m.owners.get(me!)!.clear();
      else m.owners.get(me!)!.delete(name);
    }
    await assertSameTable(m, r);
  }
  toString(): string {
    return `release(${this.slot}, ${this.resource === null ? 'all' : RESOURCES[this.resource]})`;
  }
}

class Disconnect implements Cmd {
  constructor(readonly slot: number) {}
  check(m: Readonly<Model>): boolean {
    return m.conns[this.slot] !== null;
  }
  async run(m: Model, r: Real): Promise<void> {
    const owner = m.conns[this.slot]!.owner;
    await r.clients[this.slot]!.close();
    r.clients[this.slot] = null;
    m.conns[this.slot] = null;
    if (owner !== null) {
      // A connection-bound owner with no process is released as soon as the agent sees the close.
      m.owners.delete(owner);
      await waitFor(async () => (await outcome(r.admin.request('inquire', { owner }))).code === 'NOT_REGISTERED', {
        what: `owner ${owner} released after disconnect`,
        deadlineMs: 5000,
        intervalMs: 2,
      });
    }
    await assertSameTable(m, r);
  }
  toString(): string {
    return `disconnect(${this.slot})`;
  }
}

class Reexec implements Cmd {
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    await r.agent.reexec();
    await assertSameTable(m, r);
  }
  toString(): string {
    return 'reexec';
  }
}

const slot = fc.integer({ min: 0, max: SLOTS - 1 });
const acquire = fc
  .tuple(slot, fc.uniqueArray(fc.integer({ min: 0, max: RESOURCES.length - 1 }), { minLength: 1, maxLength: 3 }), fc.constantFrom<LockMode>('exclusive', 'shared'))
  .map(([s, res, mode]) => new Acquire(s, res, mode));
const release = fc.tuple(slot, fc.option(fc.integer({ min: 0, max: RESOURCES.length - 1 }))).map(([s, res]) => new Release(s, res));
const register = fc.tuple(slot, fc.integer({ min: 0, max: OWNERS.length - 1 })).map(([s, o]) => new Register(s, o));
// Acquire and release are listed more than once: they are where the rules live.
const commands = fc.commands(
  [slot.map((s) => new Connect(s)), register, register, acquire, acquire, acquire, acquire, release, release, slot.map((s) => new Disconnect(s)), fc.constant(new Reexec())],
  { maxCommands: 40, size: 'max' },
);

describe('agent against a model', () => {
  it('keeps the same lock table as the model through random sequences', async () => {
    await using storage = await SharedStorage.create();
    await fc.assert(
      fc.asyncProperty(commands, async (cmds) => {
        await using agent = await AgentProcess.start({ storage });
        const admin = await agent.client();
        // Every slot starts connected, so short sequences already reach the interesting states.
        const clients = await Promise.all(Array.from({ length: SLOTS }, () => agent.client()));
        const model: Model = { conns: clients.map(() => ({ owner: null })), owners: new Map(), lastToken: new Map() };
        await fc.asyncModelRun(() => ({ model, real: { agent, clients, admin } }), cmds);
      }),
      { numRuns: RUNS, endOnFailure: true },
    );
  }, 60_000 + RUNS * 10_000);
});
