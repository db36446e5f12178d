// The floor the critical path is measured against (one etcd compare-and-put plus two NATS round
// trips), and the virtlockd-style handoff with the etcd3 Lock recipe, both in the same run.
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { Bus, BusConfigSchema } from '@baton/bus';
import { newMigration, rpcDeadline, systemClock } from '@baton/core';
import { ManagedProcess, waitFor } from '../support/index.js';
import { nowUs } from './stats.js';
import { TTL_SECONDS } from './migration-rig.js';

const RESPONDER_ENTRY = fileURLToPath(new URL('./nats-responder.js', import.meta.url));
/** Every raw etcd call of the floor and the Lock gets one (the product's own calls carry theirs). */
const deadline = (): { deadline: number } => ({ deadline: rpcDeadline(5_000) });

/** The floor's and the Lock's clients, and the responder process. */
export class FloorRig {
  private revision = '0';
  private constructor(
    private readonly etcd: Etcd3,
    private readonly lockSource: Etcd3,
    private readonly lockDestination: Etcd3,
    private readonly bus: Bus,
    private readonly subject: string,
    private readonly responder: ManagedProcess,
    private readonly key: Buffer,
    private readonly value: Buffer,
  ) {}

  static async start(endpoints: string[], natsUrl: string): Promise<FloorRig> {
    const cluster = 'bench-floor';
    const closers: (() => Promise<unknown> | void)[] = [];
    try {
      // Every member, as the product's EtcdConnection is given them: each call goes to a random one.
      const etcd = new Etcd3({ hosts: endpoints });
      closers.push(() => etcd.close());
      const lockSource = new Etcd3({ hosts: endpoints });
      closers.push(() => lockSource.close());
      const lockDestination = new Etcd3({ hosts: endpoints });
      closers.push(() => lockDestination.close());
      const responder = await ManagedProcess.spawn({ name: 'nats responder', command: process.execPath, args: [RESPONDER_ENTRY, natsUrl, cluster, 'responder'] });
      closers.push(() => responder.stop());
      const bus = await Bus.connect(BusConfigSchema.parse({ servers: [natsUrl], cluster }), 'baton-bench-floor');
      closers.push(() => bus.close());
      const subject = bus.subjects.agent('responder', 'echo');
      // Up once it answers (its subscription reached the server).
      await waitFor(
        async () => {
          if (!responder.running) throw new Error(`the responder exited: ${responder.output()}`);
          await bus.request(subject, {}, { timeoutMs: 200 });
          return true;
        },
        { what: 'the NATS responder', deadlineMs: 10_000, intervalMs: 20 },
      );
      // The value a record save writes: a migration record of the same shape.
      const record = newMigration(
        { id: randomUUID(), vm: { uuid: randomUUID(), name: 'floor-vm' }, source: 'host-1', destination: 'host-2', resources: [{ name: '/srv/images/floor-vm.img', lockspace: 'images', mode: 'exclusive' }] },
        systemClock.now(),
      );
      return new FloorRig(etcd, lockSource, lockDestination, bus, subject, responder, Buffer.from('/bench-floor/migrations/floor'), Buffer.from(JSON.stringify(record)));
    } catch (err) {
      for (const close of closers.reverse()) await Promise.resolve(close()).catch(() => undefined);
      throw err;
    }
  }

  /** One etcd compare-and-put (compare on the revision last written, as a record save) + two NATS request/replies. */
  async floor(record: (series: string, us: number) => void): Promise<void> {
    const t0 = nowUs();
    const res = await this.etcd.kv.txn(
      {
        compare: [{ key: this.key, target: 'Mod', result: 'Equal', mod_revision: this.revision }],
        success: [{ request_put: { key: this.key, value: this.value } }],
      },
      deadline(),
    );
    const t1 = nowUs();
    await this.bus.request(this.subject, {}, { timeoutMs: 2_000 });
    const t2 = nowUs();
    await this.bus.request(this.subject, {}, { timeoutMs: 2_000 });
    const t3 = nowUs();
    if (!res.succeeded) throw new Error('the floor compare-and-put found the key changed');
    this.revision = res.header.revision;
    record('floor', t3 - t0);
    record('floor.txn', t1 - t0);
    record('floor.nats', t2 - t1);
    record('floor.nats', t3 - t2);
    // A linearizable read, untimed in the floor: what each of the path's reads costs.
    const r0 = nowUs();
    await this.etcd.kv.range({ key: this.key }, deadline());
    record('floor.range', nowUs() - r0);
  }

  /**
   * virtlockd's order with an etcd lock: the source holds the lock (untimed), releases it (its
   * lease revoked), then the destination acquires it (a lease granted, a create-if-absent txn).
   * Timed: release start → acquire done; and the lock free, release done → acquire done.
   */
  async lockHandoff(record: (series: string, us: number) => void): Promise<void> {
    const key = '/bench-floor/lock/vm-disk';
    const held = this.lockSource.lock(key).ttl(TTL_SECONDS).options(deadline());
    await held.acquire();
    const t0 = nowUs();
    await held.release();
    const t1 = nowUs();
    const taken = this.lockDestination.lock(key).ttl(TTL_SECONDS).options(deadline());
    await taken.acquire();
    const t2 = nowUs();
    await taken.release();
    record('lock.handoff', t2 - t0);
    record('lock.free', t2 - t1);
  }

  async close(): Promise<void> {
    await this.bus.close().catch(() => undefined);
    await this.responder.stop().catch(() => undefined);
    for (const c of [this.etcd, this.lockSource, this.lockDestination]) c.close();
  }
}
