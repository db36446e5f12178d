import { z } from 'zod';
import { BatonError, LIVENESS, OwnerSchema, type Liveness, type Owner } from '@baton/core';
import { processStartTime } from '../sys/index.js';

export const OWNER_STATES = ['live', 'terminating'] as const;
export type OwnerState = (typeof OWNER_STATES)[number];

export const OwnerRecordSchema = z.object({
  owner: OwnerSchema,
  liveness: z.enum(LIVENESS),
  /** Start time of owner.pid when registered: with the pid, it names one process. */
  startTime: z.number().optional(),
  /** The connection a connection-bound owner lives and dies with. */
  connection: z.number().int().optional(),
  state: z.enum(OWNER_STATES),
});
export type OwnerRecord = z.infer<typeof OwnerRecordSchema>;

/** Attaching to an existing owner: uuid and name must match; id and pid too where given. */
function sameIdentity(registered: Owner, claimed: Owner): boolean {
  return (
    registered.uuid.toLowerCase() === claimed.uuid.toLowerCase() &&
    registered.name === claimed.name &&
    (claimed.id === undefined || registered.id === claimed.id) &&
    (claimed.pid === undefined || registered.pid === claimed.pid)
  );
}

/** Who holds locks on this host, and how the agent will learn that they are gone. */
export class OwnerRegistry {
  private readonly owners = new Map<string, OwnerRecord>();

  get(uuid: string): OwnerRecord | undefined {
    return this.owners.get(uuid.toLowerCase());
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
  register(owner: Owner, liveness: Liveness, connection: number): OwnerRecord {
    const key = owner.uuid.toLowerCase();
    const existing = this.owners.get(key);
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
    let startTime: number | undefined;
    if (owner.pid !== undefined) {
      startTime = processStartTime(owner.pid);
      if (startTime === undefined) throw new BatonError('INVALID_REQUEST', `owner process ${owner.pid} does not exist`, { details: { pid: owner.pid } });
    }
    const record: OwnerRecord = {
      owner: { ...owner, uuid: key },
      liveness,
      state: 'live',
      ...(startTime === undefined ? {} : { startTime }),
      ...(liveness === 'connection' ? { connection } : {}),
    };
    this.owners.set(key, record);
    return record;
  }

  remove(uuid: string): void {
    this.owners.delete(uuid.toLowerCase());
  }

  restore(records: readonly OwnerRecord[]): void {
    for (const r of records) this.owners.set(r.owner.uuid, r);
  }
}
