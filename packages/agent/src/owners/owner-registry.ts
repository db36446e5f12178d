import { z } from 'zod';
import { BatonError, LeaseLossSchema, LIVENESS, OwnerSchema, type LeaseLoss, type Liveness, type Owner } from '@baton/core';
import { processStartTime } from '../sys/index.js';

/** `fenced`: paused by the lease-loss policy, waiting for its leases to come back with new tokens. */
export const OWNER_STATES = ['live', 'terminating', 'fenced'] as const;
export type OwnerState = (typeof OWNER_STATES)[number];

export const OwnerRecordSchema = z.object({
  owner: OwnerSchema,
  liveness: z.enum(LIVENESS),
  /** Start time of owner.pid when registered: with the pid, it names one process. */
  startTime: z.number().optional(),
  /** The connection a connection-bound owner lives and dies with. */
  connection: z.number().int().optional(),
  state: z.enum(OWNER_STATES),
  onLeaseLoss: LeaseLossSchema.prefault({}),
  /**
   * Re-adopted from the cluster by a restarted agent: the VM runs, its process is watched by pid,
   * and the VM's own reconnection binds it to a connection again.
   */
  adopted: z.boolean().optional(),
});
export type OwnerRecord = z.infer<typeof OwnerRecordSchema>;

/** Attaching to an existing owner: uuid and name must match; id and pid too where given. */
function sameIdentity(registered: Owner, claimed: Owner): boolean {
  return (
    registered.uuid === claimed.uuid &&
    registered.name === claimed.name &&
    (claimed.id === undefined || registered.id === claimed.id) &&
    (claimed.pid === undefined || registered.pid === claimed.pid)
  );
}

/**
 * Who holds locks on this host, and how the agent will learn that they are gone. Keyed by uuid as
 * given, in the one spelling the UUID schema gives every uuid that reaches the agent (socket,
 * NATS, state file; lease values are spelt so where they are adopted).
 */
export class OwnerRegistry {
  private readonly owners = new Map<string, OwnerRecord>();

  get(uuid: string): OwnerRecord | undefined {
    return this.owners.get(uuid);
  }

  all(): OwnerRecord[] {
    return [...this.owners.values()];
  }

  get size(): number {
    return this.owners.size;
  }

  /**
   * Register, or attach another connection to a pid-bound owner that exists with the same
   * identity. A connection-bound owner belongs to one connection for its whole life.
   */
  register(owner: Owner, liveness: Liveness, connection: number, onLeaseLoss: LeaseLoss = { policy: 'kill' }): OwnerRecord {
    const key = owner.uuid;
    const existing = this.owners.get(key);
    if (existing?.adopted && sameIdentity(existing.owner, owner)) {
      existing.adopted = false;
      existing.liveness = liveness;
      existing.onLeaseLoss = onLeaseLoss;
      if (liveness === 'connection') existing.connection = connection;
      return existing;
    }
    if (existing) {
      if (!sameIdentity(existing.owner, owner) || existing.liveness !== liveness) {
        throw new BatonError('ALREADY_REGISTERED', `owner ${owner.uuid} is registered with another identity`, {
          details: { owner: owner.uuid, registered: existing.owner, liveness: existing.liveness },
        });
      }
      if (existing.liveness === 'connection' || existing.state !== 'live') {
        throw new BatonError('ALREADY_REGISTERED', `owner ${owner.uuid} is bound to another connection`, { details: { owner: owner.uuid, state: existing.state } });
      }
      return existing;
    }
    if (liveness === 'pid' && owner.pid === undefined) {
      throw new BatonError('INVALID_REQUEST', 'a pid-bound owner needs a pid', { details: { owner: owner.uuid } });
    }
    // An owner's pid is what the agent signals when the owner loses its locks (lease loss, a dead
    // connection's holdings): the agent's own would be a suicide taking every lock of the host.
    if (owner.pid === process.pid) {
      throw new BatonError('INVALID_REQUEST', `pid ${owner.pid} is the agent's own; an owner names the process that uses the locks`, { details: { owner: owner.uuid, pid: owner.pid } });
    }
    let startTime: number | undefined;
    if (owner.pid !== undefined) {
      startTime = processStartTime(owner.pid);
      if (startTime === undefined) throw new BatonError('INVALID_REQUEST', `owner process ${owner.pid} does not exist`, { details: { pid: owner.pid } });
    }
    const record: OwnerRecord = {
      owner: { ...owner, uuid: key },
      liveness,
      state: 'live',
      onLeaseLoss,
      ...(startTime === undefined ? {} : { startTime }),
      ...(liveness === 'connection' ? { connection } : {}),
    };
    this.owners.set(key, record);
    return record;
  }

  /** An owner found in the cluster after an agent restart, its process still running. */
  adopt(owner: Owner, startTime: number, onLeaseLoss: LeaseLoss): OwnerRecord {
    const record: OwnerRecord = { owner: { ...owner, uuid: owner.uuid }, liveness: 'pid', startTime, state: 'live', onLeaseLoss, adopted: true };
    this.owners.set(record.owner.uuid, record);
    return record;
  }

  remove(uuid: string): void {
    this.owners.delete(uuid);
  }

  restore(records: readonly OwnerRecord[]): void {
    for (const r of records) this.owners.set(r.owner.uuid, r);
  }
}
