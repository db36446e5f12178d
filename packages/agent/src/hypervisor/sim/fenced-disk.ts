import { appendFileSync, closeSync, constants, openSync } from 'node:fs';
import { FenceGuard, type FenceStore, type Token } from '@baton/core';
import { readTokenRecord, withRecordLock, writeTokenRecord } from '../../locks/token-record.js';

/** The highest token a disk has accepted, kept beside it in `<disk>.fence` (shared storage). */
function sidecarStore(fd: number): FenceStore {
  return { read: () => readTokenRecord(fd), write: (token) => writeTokenRecord(fd, token) };
}

/**
 * A sim VM's disk as storage with fencing: each write is admitted by the FenceGuard (a token
 * below the highest seen is refused with STALE_TOKEN) and appended under one lock with the check,
 * so a holder that lost its lease cannot slip a write in after its successor's.
 */
export class FencedDisk {
  private readonly fd: number;
  private readonly guard: FenceGuard;

  constructor(
    readonly path: string,
    private readonly ofd: boolean,
  ) {
    this.fd = openSync(`${path}.fence`, constants.O_RDWR | constants.O_CREAT, 0o644);
    this.guard = new FenceGuard(sidecarStore(this.fd), path);
  }

  write(token: Token, line: string): void {
    withRecordLock(this.fd, `${this.path}.fence`, this.ofd, () => {
      this.guard.admit(token);
      appendFileSync(this.path, line);
    });
  }

  close(): void {
    closeSync(this.fd);
  }
}
