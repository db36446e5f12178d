// The floors and the ceiling of the cluster section, sent to etcd raw with the etcd3 package's own
// KV client: what one grant is to etcd, one at a time or group-committed.
import { randomUUID } from 'node:crypto';
import type { Etcd3, ICompare, IRequestOp } from 'etcd3';
import type { LeaseValue } from '@baton/core';
import { prefixEnd } from '@baton/etcd';

export const buf = (s: string): Buffer => Buffer.from(s);

/** A lease value of the size a grant writes (~250 bytes), for the raw floors. */
export function sampleValue(resource: string): string {
  const value: LeaseValue = {
    v: 1,
    host: 'bench-raw',
    owner: { uuid: randomUUID(), name: 'bench-vm', onLeaseLoss: { policy: 'kill' } },
    lockspace: 'bench',
    resource,
    mode: 'exclusive',
    since: '2026-01-01T00:00:00.000Z',
    grant: '0123456789ab-1',
  };
  return JSON.stringify(value);
}

/**
 * What a grant is to etcd, sent raw: compare that nothing lies under the resource's prefix, put
 * the lease key attached to a lease. The release: delete it if it is still that revision.
 */
export class RawGrant {
  private readonly prefix: string;
  private readonly key: Buffer;
  private readonly value: Buffer;

  constructor(
    private readonly client: Etcd3,
    private readonly lease: string,
    name: string,
  ) {
    this.prefix = `/bench-raw/r/${name}/`;
    this.key = buf(`${this.prefix}excl`);
    this.value = buf(sampleValue(name));
  }

  async acquire(): Promise<string> {
    const compare: ICompare[] = [{ key: buf(this.prefix), range_end: prefixEnd(this.prefix), target: 'Version', result: 'Equal', version: 0 }];
    const success: IRequestOp[] = [{ request_put: { key: this.key, value: this.value, lease: this.lease } }];
    const res = await this.client.kv.txn({ compare, success });
    if (!res.succeeded) throw new Error(`raw grant of ${this.key.toString()} found it taken`);
    return res.header.revision;
  }

  async release(revision: string): Promise<void> {
    const res = await this.client.kv.txn({
      compare: [{ key: this.key, target: 'Mod', result: 'Equal', mod_revision: revision }],
      success: [{ request_delete_range: { key: this.key } }],
    });
    if (!res.succeeded) throw new Error(`raw release of ${this.key.toString()} found it changed`);
  }
}

/**
 * Group commit in its simplest form: while one transaction is in flight, what arrives waits, and
 * then goes in the next one (≤ 128 ops). Used by the bench's raw "both batched" line only, to
 * show what batching releases as well as grants would give.
 */
class GroupCommit<T> {
  private queue: { item: T; resolve(rev: string): void; reject(err: unknown): void }[] = [];
  private flushing = false;
  txns = 0;
  requests = 0;

  constructor(private readonly commit: (items: T[]) => Promise<string>) {}

  submit(item: T): Promise<string> {
    const { promise, resolve, reject } = Promise.withResolvers<string>();
    this.queue.push({ item, resolve, reject });
    if (!this.flushing) void this.flush();
    return promise;
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, 128);
      try {
        const rev = await this.commit(batch.map((b) => b.item));
        this.txns++;
        this.requests += batch.length;
        for (const b of batch) b.resolve(rev);
      } catch (err) {
        for (const b of batch) b.reject(err);
      }
    }
    this.flushing = false;
  }
}

export class RawBatched {
  readonly grants: GroupCommit<{ prefix: string; key: Buffer; value: Buffer }>;
  readonly releases: GroupCommit<{ key: Buffer; revision: string }>;

  constructor(client: Etcd3, lease: string) {
    this.grants = new GroupCommit(async (items) => {
      const res = await client.kv.txn({
        compare: items.map((i) => ({ key: buf(i.prefix), range_end: prefixEnd(i.prefix), target: 'Version', result: 'Equal', version: 0 })),
        success: items.map((i) => ({ request_put: { key: i.key, value: i.value, lease } })),
      });
      if (!res.succeeded) throw new Error('a batched raw grant found a key taken');
      return res.header.revision;
    });
    this.releases = new GroupCommit(async (items) => {
      const res = await client.kv.txn({
        compare: items.map((i) => ({ key: i.key, target: 'Mod', result: 'Equal', mod_revision: i.revision })),
        success: items.map((i) => ({ request_delete_range: { key: i.key } })),
      });
      if (!res.succeeded) throw new Error('a batched raw release found a key changed');
      return res.header.revision;
    });
  }
}

