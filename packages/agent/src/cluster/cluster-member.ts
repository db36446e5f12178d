import { BatonError, leaseTiming, type HostRecord, type LeaseTiming, type MonotonicClock, type SessionState } from '@baton/core';
import { ClusterView, EtcdConnection, HostSession, LeaseTable, type EtcdConfig, type HeldLease, type LeaseClaim, type SessionOptions, type SessionPhase } from '@baton/etcd';
import type { Logger } from '../logger.js';
import { SessionFile } from './session-file.js';

export interface ClusterMemberOptions {
  config: EtcdConfig;
  stateDir: string;
  clock: MonotonicClock;
  log: Logger;
  record: Omit<HostRecord, 'v' | 'ttlSeconds'>;
  /** The session is lost on this host's clock: fence every owner now. */
  onExpired(session: HostSession): void;
  /** A new session after a lost one: give surviving owners their leases back, or keep them fenced. */
  onRecovered(session: HostSession, lost: HostSession): Promise<void>;
  /** The lease keys the host's lock table holds (for the sweep of leases nobody holds). */
  heldKeys(): ReadonlySet<string>;
  /** After a re-exec: the previous image's session and deadline, taken over without a round trip; renewed from `start()`. */
  resume?: { session: string; validUntil: number } | undefined;
}

/**
 * This host's membership in the cluster: its etcd session (adopted across agent restarts), the
 * lease table it grants through, and the recovery loop after a lost session.
 */
export class ClusterMember implements AsyncDisposable {
  readonly timing: LeaseTiming;
  readonly table: LeaseTable;
  readonly view: ClusterView;
  readonly conn: EtcdConnection;
  private readonly file: SessionFile;
  private current!: HostSession;
  private recovering: Promise<void> | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private sweeping = false;
  private readonly abort = new AbortController();
  private closed = false;

  private constructor(private readonly opts: ClusterMemberOptions) {
    this.conn = new EtcdConnection(opts.config);
    this.timing = leaseTiming(opts.config.ttlSeconds);
    this.table = new LeaseTable(this.conn, opts.record.host, { ms: opts.config.lockDelayMs, clock: opts.clock });
    this.view = new ClusterView(this.conn);
    this.file = new SessionFile(opts.stateDir);
  }

  /** Join: adopt the session a previous process of this agent left, if etcd still has it. */
  static async join(opts: ClusterMemberOptions): Promise<ClusterMember> {
    const member = new ClusterMember(opts);
    const previous = member.file.read(opts.record.host);
    if (previous.problem) opts.log.warn({ problem: previous.problem }, 'ignoring the recorded session');
    try {
      member.current = opts.resume ? HostSession.resume({ ...member.sessionOptions(), id: opts.resume.session, validUntil: opts.resume.validUntil }) : await member.openPatiently(previous.session);
    } catch (err) {
      member.conn.close();
      throw err;
    }
    member.sweeper = setInterval(() => member.sweepInBackground(), member.timing.keepaliveMs);
    const t = member.timing;
    // sanlock prints its timeouts at start; so does Baton, all derived from the TTL.
    opts.log.info(
      { session: member.current.id, adopted: member.current.adopted, ttlMs: t.ttlMs, keepaliveMs: t.keepaliveMs, warnMs: t.warnMs, fenceMs: t.fenceMs, marginMs: t.marginMs, fenceKillGraceMs: t.fenceKillGraceMs },
      `cluster session ${member.current.adopted ? 'adopted' : 'granted'}: ttl ${t.ttlMs} ms, keepalive every ${t.keepaliveMs} ms, warn at ${t.warnMs} ms, fence at ${t.fenceMs} ms, margin ${t.marginMs} ms`,
    );
    return member;
  }

  private sessionOptions(): SessionOptions {
    return {
      conn: this.conn,
      clock: this.opts.clock,
      timing: this.timing,
      log: this.opts.log,
      record: { ...this.opts.record, ttlSeconds: this.opts.config.ttlSeconds },
      onPhase: (phase, s) => this.phaseChanged(phase, s),
    };
  }

  /**
   * At start etcd may be slow or briefly away (a leader election): try for three TTLs, then give
   * up and let the service manager restart the agent, loudly.
   */
  private async openPatiently(adopt: string | undefined): Promise<HostSession> {
    const giveUpAt = this.opts.clock.now() + 3 * this.timing.ttlMs;
    for (;;) {
      try {
        return await this.open(adopt);
      } catch (err) {
        const e = err as BatonError;
        // HOST_ALIVE: the host name's record is on another session. One this agent's previous
        // process left without recording it may still be expiring; a live second agent keeps it.
        if ((e.code !== 'UNAVAILABLE' && e.code !== 'HOST_ALIVE') || this.opts.clock.now() >= giveUpAt) throw err;
        this.opts.log.warn({ err: e.message, code: e.code }, e.code === 'HOST_ALIVE' ? 'the host name is held by another session; waiting for it to expire' : 'cannot reach etcd yet; the agent serves nothing until it has joined the cluster');
        await new Promise<void>((resolve) => setTimeout(resolve, this.timing.keepaliveMs));
      }
    }
  }

  private async open(adopt?: string, supersedes?: string): Promise<HostSession> {
    const session = await HostSession.open({ ...this.sessionOptions(), adopt, supersedes });
    try {
      this.file.write(this.opts.record.host, session.id);
    } catch (err) {
      // Not kept renewing in the background while the caller retries with another one.
      await session.close();
      throw err;
    }
    return session;
  }

  get session(): HostSession {
    return this.current;
  }

  /**
   * Start the session taken over across a re-exec (a no-op otherwise), once `onExpired` can fence
   * what this host runs: a re-exec that outlasted the deadline expires it right here.
   */
  start(): void {
    this.current.start();
  }

  get state(): SessionState {
    if (this.recovering) return 'recovering';
    const phase = this.current.phase;
    return phase === 'valid' ? 'valid' : phase === 'at-risk' ? 'at-risk' : 'fenced';
  }

  get validUntil(): number {
    return this.current.validUntil;
  }

  private phaseChanged(phase: SessionPhase, session: HostSession): void {
    if (phase !== 'expired' || session !== this.current || this.closed) return;
    this.opts.onExpired(session);
    // Only this recovery clears the marker: an earlier one ending late must not hide this one.
    const recovering: Promise<void> = this.recover(session).finally(() => {
      if (this.recovering === recovering) this.recovering = undefined;
    });
    this.recovering = recovering;
  }

  /** Open a new session as soon as etcd answers again; the lost one is never renewed. */
  private async recover(lost: HostSession): Promise<void> {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        const next = await this.open(undefined, lost.id);
        this.current = next;
        this.opts.log.warn({ session: next.id, lost: lost.id }, `new cluster session ${next.id} after losing ${lost.id}`);
        await this.opts.onRecovered(next, lost);
        // Whatever the lost session still holds in etcd (nothing re-granted moved it) goes now.
        await this.conn.leaseRevoke(lost.id).catch(() => undefined);
        return;
      } catch (err) {
        this.opts.log.warn({ err: (err as Error).message }, 'etcd still unreachable; retrying');
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, this.timing.keepaliveMs);
          signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
        });
      }
    }
  }

  async grant(claims: LeaseClaim[]): Promise<HeldLease[]> {
    const session = this.current;
    const leases = await this.table.grant(session, claims);
    // The reply may come back after the deadline (a stopped process, a slow etcd): useless then.
    if (!session.isValid || session !== this.current) {
      await this.release(leases);
      session.assertValid();
      throw new BatonError('LEASE_LOST', 'the session was replaced while the grant was in flight');
    }
    return leases;
  }

  /** Best effort: a lease that cannot be deleted now goes with its session, or the next sweep. */
  async release(leases: HeldLease[]): Promise<void> {
    if (leases.length === 0) return;
    try {
      await this.table.release(leases);
    } catch (err) {
      this.table.orphansPossible = true;
      this.opts.log.warn({ err: (err as Error).message, leases: leases.length }, 'could not delete released leases in etcd; they go with the session or the next sweep');
    }
  }

  /**
   * Every keepalive interval, if a release could not be deleted or a grant's outcome was not
   * learned: delete this session's leases the host's table does not hold.
   */
  private async sweep(): Promise<void> {
    if (!this.table.orphansPossible || !this.current.isValid) return;
    const n = await this.table.sweepOrphans(this.current, this.opts.heldKeys);
    if (n > 0) this.opts.log.warn({ swept: n }, `deleted ${n} lease(s) no grant or holder accounts for`);
  }

  private sweepInBackground(): void {
    if (this.sweeping) return;
    this.sweeping = true;
    this.sweep()
      .catch((err: unknown) => this.opts.log.warn({ err: (err as Error).message }, 'sweep of unheld leases failed; trying again'))
      .finally(() => (this.sweeping = false));
  }

  /** Leave the cluster: revoke the session only when nothing is held any more (a clean stop). */
  async close(opts: { revoke?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    this.abort.abort();
    await this.recovering;
    try {
      await this.current.close({ revoke: opts.revoke ?? false });
      if (opts.revoke) this.file.remove();
    } finally {
      this.conn.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
