import { asBatonError, systemClock, type Grant } from '@baton/core';
import { FencedDisk } from './fenced-disk.js';
import { formatDiskRecord } from './disk-records.js';

export type Emit = (event: Record<string, unknown>) => void;

/** A sim VM's events: JSON lines on stdout, each with the VM's name and the host monotonic time. */
export function emitter(vm: string): Emit {
  return (event) => process.stdout.write(JSON.stringify({ ...event, vm, t: Math.round(systemClock.now()) }) + '\n');
}

/**
 * The guest of a sim VM: a counter it appends to each exclusive disk as `vm host token seq t`,
 * through the disk's FenceGuard, and only before its write deadline (sanlock's wdmd role, inside
 * the VM): past it the guest stops writing by itself until the deadline moves.
 */
export class Guest {
  seq = 0;
  grants: Grant[] = [];
  validUntil = Infinity;
  /** Past its deadline: not writing, until the deadline moves. */
  private overdue = false;
  private readonly disks = new Map<string, FencedDisk>();

  constructor(
    private readonly vm: string,
    private readonly host: string,
    private readonly emit: Emit,
  ) {}

  /** The grants (tokens) the guest writes under from now on; a disk no longer granted is closed (unplugged). */
  holdGrants(grants: Grant[]): void {
    this.grants = grants;
    for (const [resource, disk] of this.disks) {
      if (grants.some((g) => g.resource === resource && g.mode === 'exclusive')) continue;
      disk.close();
      this.disks.delete(resource);
    }
    for (const g of grants) if (g.mode === 'exclusive' && !this.disks.has(g.resource)) this.disks.set(g.resource, new FencedDisk(g.resource, true));
  }

  /** One write to every exclusive disk; 'refused' when a disk's FenceGuard refused the token. */
  write(): 'written' | 'overdue' | 'refused' {
    const now = systemClock.now();
    if (now >= this.validUntil) {
      if (!this.overdue) this.emit({ event: 'self-fenced', seq: this.seq, overdueMs: Math.round(now - this.validUntil) });
      this.overdue = true;
      return 'overdue';
    }
    if (this.overdue) this.emit({ event: 'resumed', seq: this.seq });
    this.overdue = false;
    this.seq++;
    for (const g of this.grants) {
      const disk = this.disks.get(g.resource);
      if (!disk) continue;
      try {
        disk.write(g.token, formatDiskRecord({ vm: this.vm, host: this.host, token: g.token, seq: this.seq, t: now }));
      } catch (err) {
        const e = asBatonError(err);
        this.emit({ event: 'write-refused', disk: g.resource, token: g.token, code: e.code, details: e.details });
        return 'refused';
      }
    }
    return 'written';
  }
}
