import { randomUUID } from 'node:crypto';
import { asBatonError, type BatonError } from '@baton/core';
import type { AgentClient } from '@baton/agent';
import { expect } from 'vitest';
import {
  AgentProcess,
  checkDisk,
  GrantHistory,
  monoNow,
  readDiskRecords,
  StampedEvents,
  waitFor,
  type JsonProcess,
} from '../support/index.js';

/**
 * Pieces the fault tests (F1–F3) share: a probe of an agent's deadline, a contender that polls
 * for a disk on another host, the two hosts, the history they all feed and the takeover check.
 */

export interface DeadlineSample {
  at: number;
  state: string;
  validUntil: number | null;
}

/**
 * Reads an agent's deadline (its `watchdog` answer, the same one its VMs get) every few ms through
 * an owner of its own that holds nothing: `lastValidUntil` is the send time of the last answered
 * keepalive + fenceMs, so `lastValidUntil - fenceMs` is the last keepalive etcd is known to have had.
 */
export class DeadlineWatch {
  readonly samples: DeadlineSample[] = [];
  private inFlight = false;
  private readonly timer: NodeJS.Timeout;

  private constructor(private readonly client: AgentClient) {
    this.timer = setInterval(() => this.sample(), 5);
  }

  static async on(agent: AgentProcess): Promise<DeadlineWatch> {
    const client = await agent.client();
    await client.request('register', { owner: { uuid: randomUUID(), name: 'deadline-watch' } });
    const w = new DeadlineWatch(client);
    await w.renewal();
    return w;
  }

  private sample(): void {
    if (this.inFlight) return;
    this.inFlight = true;
    this.client
      .request('watchdog', {})
      .then((r) => void this.samples.push({ at: monoNow(), state: r.state, validUntil: r.validUntil }))
      .catch(() => undefined)
      .finally(() => (this.inFlight = false));
  }

  /** The latest deadline the agent gave while its session was valid. */
  get lastValidUntil(): number {
    let best = -Infinity;
    for (const s of this.samples) if ((s.state === 'valid' || s.state === 'at-risk') && s.validUntil !== null && s.validUntil > best) best = s.validUntil;
    return best;
  }

  /** Waits until a keepalive newer than every one seen so far is answered (the deadline moves). */
  async renewal(deadlineMs = 10_000): Promise<number> {
    const before = this.lastValidUntil;
    return waitFor(() => (this.lastValidUntil > before ? this.lastValidUntil : false), { what: 'the agent’s deadline to move (a keepalive answered)', deadlineMs, intervalMs: 1 });
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

export interface Attempt {
  sentAt: number;
  repliedAt: number;
  token?: number;
  error?: BatonError;
}

/**
 * A contender on another host: an owner that asks for the disk again and again. Each attempt is
 * kept with its send and reply times: a grant happened somewhere between the two.
 */
export class Contender {
  readonly attempts: Attempt[] = [];

  private constructor(
    readonly client: AgentClient,
    readonly holder: string,
  ) {}

  static async on(agent: AgentProcess, name: string): Promise<Contender> {
    const client = await agent.client();
    await client.request('register', { owner: { uuid: randomUUID(), name } });
    return new Contender(client, `${name}@${String(agent.config.hostId)}`);
  }

  async try(disk: string): Promise<Attempt> {
    const sentAt = monoNow();
    const a: Attempt = await this.client.request('acquire', { resources: [{ name: disk }] }).then(
      (r) => ({ sentAt, repliedAt: monoNow(), token: r.grants[0]!.token }),
      (err: unknown) => ({ sentAt, repliedAt: monoNow(), error: asBatonError(err) }),
    );
    this.attempts.push(a);
    return a;
  }

  /** Ask every `intervalMs` until granted; anything but RESOURCE_BUSY before that fails the wait. */
  async untilGranted(disk: string, deadlineMs: number, intervalMs = 20): Promise<Attempt & { token: number }> {
    return waitFor(
      async () => {
        const a = await this.try(disk);
        if (a.token !== undefined) return a as Attempt & { token: number };
        if (a.error?.code !== 'RESOURCE_BUSY') throw new Error(`unexpected answer ${a.error?.code}: ${a.error?.message}`);
        return false;
      },
      { what: `${disk} granted to ${this.holder}`, deadlineMs, intervalMs, attemptTimeoutMs: deadlineMs },
    );
  }

  /** Ask every `intervalMs` until `stop` aborts: for "refused throughout" checks. */
  async keepTrying(disk: string, stop: AbortSignal, intervalMs = 20): Promise<Attempt[]> {
    const mine: Attempt[] = [];
    while (!stop.aborted) {
      mine.push(await this.try(disk));
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, intervalMs);
        stop.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
      });
    }
    return mine;
  }

  async release(): Promise<number> {
    await this.client.request('release', {});
    return monoNow();
  }
}

/**
 * A sim VM's grants and losses as history events: `running` and `tokens` are grants (stamped when
 * the test saw them); `self-fenced`, `lease-lost` and `terminated` end the holding (stamped when
 * seen, i.e. late: conservative for S1).
 */
export function recordVm(history: GrantHistory, events: StampedEvents, holder: string): void {
  events.poll();
  for (const { at, e } of events.events) {
    if (e.event === 'running' || e.event === 'tokens') {
      for (const g of e.grants as { resource: string; token: number; mode: string }[]) {
        if (g.mode === 'exclusive') history.record({ resource: g.resource, token: g.token, holder, at, kind: 'grant' });
      }
    } else if (e.event === 'self-fenced' || e.event === 'lease-lost' || e.event === 'terminated') {
      const running = events.events.find((s) => s.e.event === 'running');
      for (const g of (running?.e.grants ?? []) as { resource: string }[]) history.record({ resource: g.resource, token: 0, holder, at, kind: 'lost' });
    }
  }
}

/** The VM exited (seen at `at`): whatever it held ends there. */
export function recordExit(history: GrantHistory, events: StampedEvents, holder: string, at: number): void {
  const running = events.events.find((s) => s.e.event === 'running');
  for (const g of (running?.e.grants ?? []) as { resource: string }[]) history.record({ resource: g.resource, token: 0, holder, at, kind: 'lost' });
}

/** A contender's grant (at the attempt's send time: the earliest it can have happened) and release. */
export function recordContender(history: GrantHistory, c: Contender, disk: string, granted: Attempt & { token: number }, releasedAt?: number): void {
  history.record({ resource: disk, token: granted.token, holder: c.holder, at: granted.sentAt, kind: 'grant' });
  if (releasedAt !== undefined) history.record({ resource: disk, token: 0, holder: c.holder, at: releasedAt, kind: 'release' });
}

export { GrantHistory };

/**
 * The new holder's VM (on host-b) writes; then the history must pass S1/S2 and the disk hold
 * exactly two epochs, vm-a's then vm-b's. Returns vm-b's token and the epochs.
 */
export async function expectTakeover(vmB: JsonProcess, disk: string, history: GrantHistory, tokenA: number): Promise<{ tokenB: number; epochs: ReturnType<typeof checkDisk> }> {
  using vmBEvents = new StampedEvents(vmB);
  const runningB = await vmBEvents.wait((e) => e.event === 'running', 'running');
  const tokenB = (runningB.e.grants as { token: number }[])[0]!.token;
  await waitFor(() => readDiskRecords(disk).filter((r) => r.vm === 'vm-b').length >= 10, { what: 'vm-b writing', deadlineMs: 5_000, intervalMs: 10 });
  recordVm(history, vmBEvents, 'vm-b@host-b');
  history.check();
  const epochs = checkDisk(disk);
  expect(epochs.map((e) => [e.vm, e.host, e.token])).toEqual([
    ['vm-a', 'host-a', tokenA],
    ['vm-b', 'host-b', tokenB],
  ]);
  return { tokenB, epochs };
}
