import { BatonError, HostRecordSchema, type HostRecord, type LeaseTiming, type MonotonicClock } from '@baton/core';
import type { IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse } from 'etcd3';
import { etcdError, type EtcdConnection } from './connection.js';

/** The subset of a pino logger the adapter writes to. */
export interface SessionLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export const SESSION_PHASES = ['valid', 'at-risk', 'expired', 'closed'] as const;
export type SessionPhase = (typeof SESSION_PHASES)[number];

/** Which phase may follow which. `expired` is final for a session: recovery opens a new one. */
const NEXT: Record<SessionPhase, readonly SessionPhase[]> = {
  valid: ['at-risk', 'expired', 'closed'],
  'at-risk': ['valid', 'expired', 'closed'],
  expired: ['closed'],
  closed: [],
};

export interface SessionOptions {
  conn: EtcdConnection;
  clock: MonotonicClock;
  timing: LeaseTiming;
  log: SessionLog;
  /** The host record published on the session; none for a session that is not a host's (a coordinator's). */
  record?: Omit<HostRecord, 'v'>;
  /** A session a previous process of this agent held: adopted if etcd still has it. */
  adopt?: string | undefined;
  /** A session of this process that was lost (its deadline passed) and may still live in etcd: its host record is ours to take over. */
  supersedes?: string | undefined;
  onPhase(phase: SessionPhase, session: HostSession): void;
}

/**
 * One etcd lease for the whole host (not one per resource), kept alive every TTL/3 on one
 * keepalive stream. The session is valid until `validUntil`: the send time of the last keepalive
 * etcd answered, plus the fence delay, on the monotonic clock. Past it the session is `expired`
 * for good, whatever etcd says later: the owners have been fenced, and a new session starts over.
 */
export class HostSession {
  phase: SessionPhase = 'valid';
  readonly adopted: boolean;
  private lastOkSentAt: number;
  private stream: IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse> | undefined;
  private opening: Promise<void> | undefined;
  /** Keepalives not answered yet, with their send times; etcd answers on a stream in order. */
  private waiters: { sentAt: number; done(err?: BatonError): void }[] = [];
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private readonly ended = new AbortController();
  /** Aborts when the session expires on this host's clock or is closed: leadership hangs on it. */
  readonly lost: AbortSignal = this.ended.signal;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;

  private constructor(
    readonly id: string,
    sentAt: number,
    adopted: boolean,
    private readonly opts: SessionOptions,
  ) {
    this.lastOkSentAt = sentAt;
    this.adopted = adopted;
  }

  /** Grant a new session, or adopt `opts.adopt` if etcd still holds it, and publish the host record. */
  static async open(opts: SessionOptions): Promise<HostSession> {
    const { conn, clock, timing } = opts;
    let session: HostSession | undefined;
    if (opts.adopt !== undefined) {
      const sentAt = clock.now();
      const ttl = await conn.leaseTimeToLive(opts.adopt);
      // TTL -1: gone. A live one is renewed at once: etcd restarts its TTL on receipt, after sentAt.
      if (Number(ttl.TTL) > 0) {
        session = new HostSession(opts.adopt, sentAt, true, opts);
        await session.keepaliveOnce();
      }
    }
    if (!session) {
      const sentAt = clock.now();
      const granted = await conn.leaseGrant(timing.ttlMs / 1000);
      session = new HostSession(String(granted.ID), sentAt, false, opts);
    }
    if (opts.record) {
      const record: HostRecord = HostRecordSchema.parse({ v: 1, ...opts.record });
      try {
        await claimHostRecord(conn, record, session.id, opts.supersedes);
      } catch (err) {
        // An adopted session has its keepalive stream open already: it goes with the failure.
        session.stop();
        throw err;
      }
    }
    session.schedule();
    return session;
  }

  /**
   * The session a previous image of this very process held, across execve: no etcd round trip,
   * the deadline carried over (the monotonic clock survives exec). It does nothing until
   * `start()`: the exec may have outlasted the deadline, and the expiry must reach a holder that
   * can fence what the old image left running, not one still being built.
   */
  static resume(opts: SessionOptions & { id: string; validUntil: number }): HostSession {
    return new HostSession(opts.id, opts.validUntil - opts.timing.fenceMs, true, opts);
  }

  /**
   * Start renewing a resumed session: at once (the last keepalive may be most of an interval old,
   * and the exec took time), or expire it now if its deadline passed. Idempotent; a session from
   * `open` is started already.
   */
  start(): void {
    if (this.keepaliveTimer !== undefined || this.phase !== 'valid') return;
    this.schedule();
    this.tick();
  }

  /** Until when, on the host's monotonic clock, this session provably holds its leases. */
  get validUntil(): number {
    return this.phase === 'expired' || this.phase === 'closed' ? this.lastOkSentAt : this.lastOkSentAt + this.opts.timing.fenceMs;
  }

  get isValid(): boolean {
    return (this.phase === 'valid' || this.phase === 'at-risk') && this.opts.clock.now() < this.validUntil;
  }

  /** Checked before every grant is handed out, not only by the timer: a stopped process wakes up late. */
  assertValid(): void {
    if (this.phase !== 'closed' && this.opts.clock.now() >= this.validUntil) this.expire('the fence deadline passed');
    if (this.phase === 'expired' || this.phase === 'closed') {
      throw new BatonError('LEASE_LOST', `session ${this.id} is ${this.phase}; this host grants nothing until a new session is established`, { details: { session: this.id } });
    }
  }

  get sinceLastKeepaliveMs(): number {
    return this.opts.clock.now() - this.lastOkSentAt;
  }

  private schedule(): void {
    this.keepaliveTimer = setInterval(() => this.tick(), this.opts.timing.keepaliveMs);
    this.armDeadline();
  }

  private armDeadline(): void {
    clearTimeout(this.deadlineTimer);
    const now = this.opts.clock.now();
    const warnAt = this.lastOkSentAt + this.opts.timing.warnMs;
    const next = this.phase === 'valid' && now < warnAt ? warnAt : this.validUntil;
    this.deadlineTimer = setTimeout(() => this.checkDeadline(), Math.max(0, next - now));
  }

  private checkDeadline(): void {
    if (this.phase === 'expired' || this.phase === 'closed') return;
    const now = this.opts.clock.now();
    if (now >= this.validUntil) {
      this.expire(`no keepalive answered for ${Math.round(now - this.lastOkSentAt)} ms`);
      return;
    }
    if (now >= this.lastOkSentAt + this.opts.timing.warnMs && this.phase === 'valid') {
      this.setPhase('at-risk');
      this.opts.log.warn(this.standing(now), 'session at risk: keepalives are not being answered');
    }
    this.armDeadline();
  }

  /** Where the session stands at `now`, for its log lines. */
  private standing(now: number): { session: string; sinceKeepaliveMs: number; fenceInMs: number } {
    return { session: this.id, sinceKeepaliveMs: Math.round(now - this.lastOkSentAt), fenceInMs: Math.round(this.validUntil - now) };
  }

  private tick(): void {
    // Every attempt (each retry too) looks at the deadline, not only its timer: warning and
    // fencing are what the host's safety rests on, and must not hang on one setTimeout.
    this.checkDeadline();
    if (this.phase === 'expired' || this.phase === 'closed') return;
    this.keepaliveOnce().catch((err: unknown) => {
      // With where the session stands: what an operator (or a failed test's log) needs to judge it.
      this.opts.log.warn({ ...this.standing(this.opts.clock.now()), err: (err as Error).message, phase: this.phase }, 'keepalive failed');
      // Two more chances before the fence would be too few when a member has just died: try
      // again soon (on a new stream, likely another member) rather than a whole interval later.
      if (!this.retryTimer && this.phase !== 'expired' && this.phase !== 'closed') {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.tick();
        }, Math.min(this.opts.timing.keepaliveMs / 4, 250));
      }
    });
  }

  /** Send one keepalive and wait for its answer (or the request timeout). */
  private async keepaliveOnce(): Promise<void> {
    const stream = await this.openStream();
    const sentAt = this.opts.clock.now();
    const answered = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        // An answer that does not come in time: the stream may sit on a dead link. Start another.
        this.resetStream();
        reject(new BatonError('UNAVAILABLE', `keepalive unanswered after ${this.opts.conn.requestTimeoutMs} ms`));
      }, this.opts.conn.requestTimeoutMs);
      this.waiters.push({ sentAt, done: (err) => (clearTimeout(timer), err ? reject(err) : resolve()) });
    });
    stream.write({ ID: this.id });
    await answered;
  }

  private openStream(): Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> {
    if (this.stream) return Promise.resolve(this.stream);
    this.opening ??= (async () => {
      const stream = await this.opts.conn.keepaliveStream();
      // Only the current stream's answers count: the waiters are its keepalives, and an answer a
      // replaced stream still delivers would be credited to a later send, moving the deadline on.
      stream.on('data', (res: ILeaseKeepAliveResponse) => stream === this.stream && this.answered(res));
      stream.on('error', (err: unknown) => this.streamFailed(stream, etcdError(err, 'the keepalive stream')));
      stream.on('end', () => this.streamFailed(stream, new BatonError('UNAVAILABLE', 'the keepalive stream ended')));
      this.stream = stream;
    })().finally(() => (this.opening = undefined));
    return this.opening.then(() => this.stream!);
  }

  private answered(res: ILeaseKeepAliveResponse): void {
    const waiter = this.waiters.shift();
    if (waiter === undefined) return;
    if (Number(res.TTL) <= 0) {
      this.expire('etcd answered that the session no longer exists');
      waiter.done(new BatonError('LEASE_LOST', `session ${this.id} expired in etcd`));
      return;
    }
    if (this.phase === 'expired' || this.phase === 'closed') return waiter.done();
    const { sentAt } = waiter;
    // The send time, not the arrival: etcd restarted the TTL somewhere after sentAt.
    if (sentAt > this.lastOkSentAt) this.lastOkSentAt = sentAt;
    if (this.phase === 'at-risk') {
      this.setPhase('valid');
      this.opts.log.info({ session: this.id }, 'session renewed again');
    }
    this.armDeadline();
    waiter.done();
  }

  private streamFailed(stream: unknown, err: BatonError): void {
    if (stream !== this.stream) return;
    this.stream = undefined;
    for (const w of this.waiters.splice(0)) w.done(err);
  }

  private resetStream(): void {
    const stream = this.stream;
    if (!stream) return;
    this.streamFailed(stream, new BatonError('UNAVAILABLE', 'keepalive stream reset'));
    stream.cancel();
  }

  private expire(why: string): void {
    if (this.phase === 'expired' || this.phase === 'closed') return;
    this.opts.log.error({ session: this.id, why, sinceKeepaliveMs: Math.round(this.sinceLastKeepaliveMs) }, `session ${this.id} expired on this host's clock: ${why}`);
    this.stop();
    this.setPhase('expired');
  }

  private setPhase(next: SessionPhase): void {
    if (!NEXT[this.phase].includes(next)) throw new BatonError('INTERNAL', `session phase ${this.phase} → ${next} is not allowed`);
    this.phase = next;
    if (next === 'expired' || next === 'closed') this.ended.abort(new BatonError('LEASE_LOST', `session ${this.id} ${next}`));
    this.opts.onPhase(next, this);
  }

  private stop(): void {
    clearTimeout(this.retryTimer);
    clearInterval(this.keepaliveTimer);
    clearTimeout(this.deadlineTimer);
    this.resetStream();
  }

  /** Stop renewing. With `revoke`, etcd deletes every key of the session now (a clean shutdown). */
  async close(opts: { revoke?: boolean } = {}): Promise<void> {
    if (this.phase === 'closed') return;
    this.stop();
    this.setPhase('closed');
    if (opts.revoke) await this.opts.conn.leaseRevoke(this.id);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Puts the host record on `session` only while no other session holds it, so that a second agent
 * configured with a live host's name is refused instead of taking the name over (once its own
 * session lapsed, the live host would vanish from the cluster's view and could be fenced as dead
 * while its VMs run). The session a previous process of this agent held (adopted), or the one this
 * process lost and is replacing, holds it: ours.
 */
async function claimHostRecord(conn: EtcdConnection, record: HostRecord, session: string, supersedes: string | undefined): Promise<void> {
  const key = Buffer.from(conn.keys.host(record.host));
  const put = [{ request_put: { key, value: Buffer.from(JSON.stringify(record)), lease: session } }];
  const res = await conn.txn({ compare: [{ key, target: 'Version', result: 'Equal', version: 0 }], success: put, failure: [{ request_range: { key } }] }, 'claim of the host record');
  if (res.succeeded) return;
  const holder = String(res.responses[0]?.response_range?.kvs[0]?.lease ?? '');
  if (holder === session || (supersedes !== undefined && holder === supersedes)) {
    const ours = await conn.txn({ compare: [{ key, target: 'Lease', result: 'Equal', lease: holder }], success: put, failure: [] }, 'renewal of the host record');
    if (ours.succeeded) return;
  }
  throw new BatonError('HOST_ALIVE', `host ${record.host} is held by another live session (${holder || 'gone since'}): is another agent running with this hostId?`, {
    details: { host: record.host, session: holder },
  });
}
