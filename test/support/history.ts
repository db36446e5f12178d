import { readFileSync } from 'node:fs';
import { waitFor } from './wait-for.js';

/** One record a sim VM appended to a disk: `vm host token seq t` (t: host monotonic ms). */
export interface DiskRecord {
  vm: string;
  host: string;
  token: number;
  seq: number;
  t: number;
}

export function readDiskRecords(path: string): DiskRecord[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((line, i) => {
      const [vm, host, token, seq, t] = line.split(' ');
      const r = { vm: vm!, host: host!, token: Number(token), seq: Number(seq), t: Number(t) };
      if (!Number.isSafeInteger(r.token) || !Number.isSafeInteger(r.seq)) throw new Error(`${path}:${i + 1}: not a disk record: ${line}`);
      return r;
    });
}

/**
 * S1 and S2 on a disk's contents: in the order the storage accepted them, tokens never decrease;
 * each token has one writer (one token epoch, one VM on one host); a writer whose token was
 * superseded never writes again. Returns the epochs, in order, for further assertions.
 */
export function checkDisk(path: string): DiskEpoch[] {
  return checkRecords(readDiskRecords(path), path);
}

/** A run of writes under one token, by one VM on one host. */
export interface DiskEpoch {
  token: number;
  vm: string;
  host: string;
  writes: number;
  firstT: number;
  lastT: number;
}

/** `checkDisk` on records already read from `path` (named in the violation). */
export function checkRecords(records: readonly DiskRecord[], path: string): DiskEpoch[] {
  const epochs: DiskEpoch[] = [];
  for (const r of records) {
    const cur = epochs.at(-1);
    if (cur && r.token < cur.token) throw new Error(`S2 violated on ${path}: ${r.vm}@${r.host} wrote with token ${r.token} after token ${cur.token} (seq ${r.seq})`);
    if (cur && r.token === cur.token) {
      if (r.vm !== cur.vm || r.host !== cur.host) throw new Error(`S1 violated on ${path}: token ${r.token} written by ${cur.vm}@${cur.host} and ${r.vm}@${r.host}`);
      cur.writes++;
      cur.lastT = r.t;
      continue;
    }
    epochs.push({ token: r.token, vm: r.vm, host: r.host, writes: 1, firstT: r.t, lastT: r.t });
  }
  // Two epochs' writes interleaving in time would mean two writers at once, whatever the order.
  for (let i = 1; i < epochs.length; i++) {
    if (epochs[i]!.firstT < epochs[i - 1]!.lastT) {
      throw new Error(`S1 violated on ${path}: token ${epochs[i]!.token} wrote at ${epochs[i]!.firstT} before token ${epochs[i - 1]!.token}'s last write at ${epochs[i - 1]!.lastT}`);
    }
  }
  return epochs;
}

/** Until the disk's newest writes carry `token` (at least `writes` of them under it). */
export function writtenUnder(path: string, token: number, writes = 1): Promise<unknown> {
  return waitFor(
    () => {
      const last = checkDisk(path).at(-1);
      return (last?.token === token && last.writes >= writes) || false;
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
