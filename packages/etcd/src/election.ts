import { BatonError } from '@baton/core';
import type { IKeyValue } from 'etcd3';
import type { EtcdConnection } from './connection.js';
import type { HostSession } from './session.js';

export interface CampaignOptions {
  conn: EtcdConnection;
  /** The candidate's session: its candidacy lives and dies with it. */
  session: HostSession;
  /** The election's name (one per role: `coordinator`). */
  name: string;
  /** What followers learn of the leader: its address, as JSON or text. */
  value: string;
  /** Aborts the campaign, or the leadership once won. */
  signal?: AbortSignal;
}

/** Won leadership: `signal` aborts the moment it is lost (candidacy key gone, session lost, resign). */
export interface Leadership {
  readonly signal: AbortSignal;
  readonly key: string;
  /** Give leadership up: the key is deleted and the next candidate takes over. */
  resign(): Promise<void>;
}

function byCreation(a: IKeyValue, b: IKeyValue): number {
  const x = BigInt(a.create_revision);
  const y = BigInt(b.create_revision);
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * Leader election on KV, lease and watch only (not the etcd3 Election recipe): each candidate puts
 * a key on its session; the oldest key (lowest create revision) leads; every other candidate
 * watches only the key just before its own, so a leader's loss wakes one successor, not all.
 */
export class Election {
  constructor(
    private readonly conn: EtcdConnection,
    private readonly name: string,
  ) {}

  private get prefix(): string {
    return `${this.conn.keys.prefix}election/${this.name}/`;
  }

  /** The candidates' values in line: the leader first, then each in the order it will take over. */
  async candidates(): Promise<string[]> {
    const res = await this.conn.range(this.prefix, { prefix: true });
    return [...res.kvs].sort(byCreation).map((kv) => kv.value.toString());
  }

  /** The current leader's value, or undefined if nobody campaigns. */
  async leader(): Promise<string | undefined> {
    return (await this.candidates())[0];
  }

  /** Resolves once this candidate leads. */
  static async campaign(opts: CampaignOptions): Promise<Leadership> {
    const election = new Election(opts.conn, opts.name);
    const key = `${election.prefix}${opts.session.id}`;
    const buf = Buffer.from(key);
    // Keep the key (and its place in line) if this session already campaigned.
    await opts.conn.txn(
      {
        compare: [{ key: buf, target: 'Version', result: 'Equal', version: 0 }],
        success: [{ request_put: { key: buf, value: Buffer.from(opts.value), lease: opts.session.id } }],
      },
      'a candidacy',
    );
    for (;;) {
      opts.signal?.throwIfAborted();
      opts.session.assertValid();
      const res = await opts.conn.range(election.prefix, { prefix: true });
      const line = [...res.kvs].sort(byCreation);
      const mine = line.findIndex((kv) => kv.key.toString() === key);
      if (mine < 0) throw new BatonError('LEASE_LOST', `candidacy ${key} vanished: the session expired`);
      if (mine === 0) return election.lead(opts, key, String(res.header.revision));
      await election.awaitDeletion(line[mine - 1]!.key.toString(), String(BigInt(res.header.revision) + 1n), AbortSignal.any([opts.session.lost, ...(opts.signal ? [opts.signal] : [])]));
    }
  }

  /** Until `key` is deleted; rejects once `signal` aborts (the caller's stop, or the session lost), before or during the wait. */
  private async awaitDeletion(key: string, fromRevision: string, signal: AbortSignal): Promise<void> {
    const gone = Promise.withResolvers<void>();
    const watch = await this.conn.watch(key, { fromRevision }, { delete: () => gone.resolve() });
    const abort = (): void => gone.reject(signal.reason);
    signal.addEventListener('abort', abort, { once: true });
    // Aborted while the watch was being set up: the listener alone would never hear of it.
    if (signal.aborted) abort();
    try {
      await gone.promise;
    } finally {
      signal.removeEventListener('abort', abort);
      await watch.cancel();
    }
  }

  private async lead(opts: CampaignOptions, key: string, revision: string): Promise<Leadership> {
    const lost = new AbortController();
    const watch = await this.conn.watch(key, { fromRevision: String(BigInt(revision) + 1n) }, { delete: () => lost.abort(new BatonError('NOT_LEADER', `leadership key ${key} was deleted`)) });
    // Lost the moment the session is lost on this host's clock, the key is deleted, or the caller aborts.
    const sources = [opts.session.lost, ...(opts.signal ? [opts.signal] : [])];
    const relays = sources.map((source) => {
      const relay = (): void => lost.abort(source.reason);
      if (source.aborted) relay();
      else source.addEventListener('abort', relay, { once: true });
      return () => source.removeEventListener('abort', relay);
    });
    const cleanup = (): void => {
      for (const remove of relays) remove();
      watch.cancel().catch(() => undefined);
    };
    if (lost.signal.aborted) cleanup();
    else lost.signal.addEventListener('abort', cleanup, { once: true });
    return {
      signal: lost.signal,
      key,
      resign: async () => {
        lost.abort(new BatonError('NOT_LEADER', 'resigned'));
        await this.conn.deleteKey(key);
      },
    };
  }
}
