import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { diskEpochs, formatDiskRecord, readDiskRecords, type DiskRecord } from '../src/hypervisor/sim/disk-records.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function disk(lines: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'baton-disk-'));
  dirs.push(dir);
  const path = join(dir, 'disk.img');
  writeFileSync(path, lines);
  return path;
}

const rec = (vm: string, host: string, token: number, seq: number, t: number): DiskRecord => ({ vm, host, token, seq, t });

describe('sim disk records: what every S1/S2 check reads', () => {
  it('reads back what the guest writes, and groups it into one epoch per token in storage order', () => {
    const written = [rec('vm1', 'host-a', 7, 1, 100), rec('vm1', 'host-a', 7, 2, 120), rec('vm1', 'host-b', 15, 3, 130.4)];
    const records = readDiskRecords(disk(written.map(formatDiskRecord).join('')));
    expect(records).toEqual([written[0], written[1], { ...written[2], t: 130 }]);
    expect(diskEpochs(records)).toEqual({
      epochs: [
        { token: 7, vm: 'vm1', host: 'host-a', writes: 2, firstT: 100, lastT: 120 },
        { token: 15, vm: 'vm1', host: 'host-b', writes: 1, firstT: 130, lastT: 130 },
      ],
      problems: [],
    });
  });

  it('names every break: a token going down, two writers under one token, two epochs writing at once', () => {
    expect(diskEpochs([rec('vm1', 'host-a', 9, 1, 10), rec('vm1', 'host-b', 8, 2, 20)]).problems).toEqual(['S2 violated: vm1@host-b wrote with token 8 after token 9 (seq 2)']);
    expect(diskEpochs([rec('vm1', 'host-a', 9, 1, 10), rec('vm1', 'host-b', 9, 2, 20)]).problems).toEqual(['S1 violated: token 9 written by vm1@host-a and vm1@host-b']);
    expect(diskEpochs([rec('vm1', 'host-a', 9, 1, 10), rec('vm1', 'host-a', 9, 2, 30), rec('vm1', 'host-b', 12, 3, 20)]).problems).toEqual([
      "S1 violated: token 12 wrote at 20 before token 9's last write at 30",
    ]);
  });

  it('refuses a line that is not a record, naming the file and line', () => {
    const path = disk('vm1 host-a 7 1 100\ngarbage\n');
    expect(() => readDiskRecords(path)).toThrow(expect.objectContaining({ code: 'INVALID_REQUEST', message: `${path}:2: not a disk record: garbage` }));
  });
});
