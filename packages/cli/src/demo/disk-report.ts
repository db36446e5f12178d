import { readFileSync } from 'node:fs';

/** A run of a disk's records written under one token: one writer (VM on a host) per epoch. */
export interface WriterEpoch {
  vm: string;
  host: string;
  token: number;
  records: number;
}

/**
 * A sim disk's records (`vm host token seq t`), grouped in the order the storage accepted them.
 * `problems` names every break of S1/S2 found: a token going down, or two writers on one token.
 */
export function diskReport(path: string): { epochs: WriterEpoch[]; problems: string[] } {
  const epochs: WriterEpoch[] = [];
  const problems: string[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n').filter(Boolean)) {
    const [vm = '?', host = '?', token] = line.split(' ');
    const t = Number(token);
    const cur = epochs.at(-1);
    if (cur && t < cur.token) problems.push(`token went down from ${cur.token} to ${t} (${vm}@${host})`);
    if (cur && t === cur.token) {
      if (cur.vm !== vm || cur.host !== host) problems.push(`token ${t} written by ${cur.vm}@${cur.host} and ${vm}@${host}`);
      cur.records++;
      continue;
    }
    epochs.push({ vm, host, token: t, records: 1 });
  }
  return { epochs, problems };
}
