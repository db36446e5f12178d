import { readFileSync } from 'node:fs';
import { BatonError } from '@baton/core';

/**
 * What a sim VM appends to each disk it writes, one line per write: `vm host token seq t`, t the
 * host's monotonic clock in whole ms. The storage (the disk's FenceGuard) accepts a line only under
 * a token at least the highest it has seen, so the file is the disk's history in the order the
 * storage accepted it: what the demo reports and every test checks S1 and S2 on.
 */
export interface DiskRecord {
  vm: string;
  host: string;
  token: number;
  seq: number;
  t: number;
}

export function formatDiskRecord(r: DiskRecord): string {
  return `${r.vm} ${r.host} ${r.token} ${r.seq} ${Math.round(r.t)}\n`;
}

/** Every record of a disk; a line that is not one is INVALID_REQUEST, naming the file and line. */
export function readDiskRecords(path: string): DiskRecord[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((line, i) => {
      const [vm, host, token, seq, t] = line.split(' ');
      const r = { vm: vm!, host: host!, token: Number(token), seq: Number(seq), t: Number(t) };
      if (!Number.isSafeInteger(r.token) || !Number.isSafeInteger(r.seq) || !Number.isFinite(r.t)) {
        throw new BatonError('INVALID_REQUEST', `${path}:${i + 1}: not a disk record: ${line}`, { details: { path, line: i + 1 } });
      }
      return r;
    });
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

/**
 * The disk's epochs in storage order, and every break of S1 or S2 found: a token going down (S2),
 * two writers under one token, or two epochs' writes interleaving in time (S1: two writers at
 * once, whatever order the storage took them in).
 */
export function diskEpochs(records: readonly DiskRecord[]): { epochs: DiskEpoch[]; problems: string[] } {
  const epochs: DiskEpoch[] = [];
  const problems: string[] = [];
  for (const r of records) {
    const cur = epochs.at(-1);
    if (cur && r.token < cur.token) problems.push(`S2 violated: ${r.vm}@${r.host} wrote with token ${r.token} after token ${cur.token} (seq ${r.seq})`);
    if (cur && r.token === cur.token) {
      if (r.vm !== cur.vm || r.host !== cur.host) problems.push(`S1 violated: token ${r.token} written by ${cur.vm}@${cur.host} and ${r.vm}@${r.host}`);
      cur.writes++;
      cur.lastT = r.t;
      continue;
    }
    epochs.push({ token: r.token, vm: r.vm, host: r.host, writes: 1, firstT: r.t, lastT: r.t });
  }
  for (let i = 1; i < epochs.length; i++) {
    const [before, after] = [epochs[i - 1]!, epochs[i]!];
    if (after.firstT < before.lastT) problems.push(`S1 violated: token ${after.token} wrote at ${after.firstT} before token ${before.token}'s last write at ${before.lastT}`);
  }
  return { epochs, problems };
}
