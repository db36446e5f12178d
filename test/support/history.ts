import { diskEpochs, readDiskRecords, type DiskEpoch, type DiskRecord } from '@baton/agent';
import { waitFor } from './wait-for.js';

export { readDiskRecords, type DiskEpoch, type DiskRecord };

/**
 * S1 and S2 on a disk's contents (`diskEpochs`, the sim's own reading of its disk format): in the
 * order the storage accepted them, tokens never decrease; each token has one writer (one token
 * epoch, one VM on one host); a writer whose token was superseded never writes again. Returns the
 * epochs, in order, for further assertions; throws naming every violation.
 */
export function checkDisk(path: string): DiskEpoch[] {
  return checkRecords(readDiskRecords(path), path);
}

/** `checkDisk` on records already read from `path` (named in the violation). */
export function checkRecords(records: readonly DiskRecord[], path: string): DiskEpoch[] {
  const { epochs, problems } = diskEpochs(records);
  if (problems.length > 0) throw new Error(`${path}: ${problems.join('; ')}`);
  return epochs;
}

/** Until the disk's newest writes carry `token` (at least `writes` of them under it); its epochs then. */
export function writtenUnder(path: string, token: number, writes = 1): Promise<DiskEpoch[]> {
  return waitFor(
    () => {
      const epochs = checkDisk(path);
      const last = epochs.at(-1);
      return (last?.token === token && last.writes >= writes && epochs) || false;
    },
    { what: `${path} written with token ${token}`, deadlineMs: 5_000 },
  );
}

export interface GrantEvent {
  resource: string;
  token: number;
  holder: string;
  /** Host monotonic ms (process.hrtime), comparable across processes on this machine. */
  at: number;
  kind: 'grant' | 'release' | 'lost';
}

/**
 * A history of grants and releases (from clients and VM events). S2: per resource, each grant's
 * token is above every earlier one. S1: between a grant and its holder's release or loss, no other
 * holder is granted the resource.
 */
export class GrantHistory {
  readonly events: GrantEvent[] = [];

  record(e: GrantEvent): void {
    this.events.push(e);
  }

  check(): void {
    const byResource = new Map<string, GrantEvent[]>();
    for (const e of [...this.events].sort((a, b) => a.at - b.at)) byResource.set(e.resource, [...(byResource.get(e.resource) ?? []), e]);
    for (const [resource, events] of byResource) {
      let maxToken = 0;
      let holder: string | undefined;
      for (const e of events) {
        if (e.kind === 'grant') {
          if (e.token <= maxToken) throw new Error(`S2 violated on ${resource}: ${e.holder} granted token ${e.token} after token ${maxToken}`);
          if (holder !== undefined && holder !== e.holder) throw new Error(`S1 violated on ${resource}: ${e.holder} granted while ${holder} held it`);
          maxToken = e.token;
          holder = e.holder;
        } else if (e.holder === holder) {
          holder = undefined;
        }
      }
    }
  }
}
