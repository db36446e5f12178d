import { readSync, writeSync } from 'node:fs';
import { BatonError, type Token } from '@baton/core';
import { setLock, SysError, unlock } from '../sys/index.js';
import { LOCK_RANGE } from './lock-file.js';

const SPIN_LIMIT = 20_000;
const spinCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Run `fn` under an exclusive lock on byte 0 of a small record file on shared storage (another
 * host may hold it). The critical sections are a read and a write of a few bytes, so contenders
 * spin briefly instead of blocking the event loop in F_SETLKW.
 */
export function withRecordLock<T>(fd: number, path: string, ofd: boolean, fn: () => T): T {
  for (let i = 0; ; i++) {
    try {
      setLock(fd, 'exclusive', LOCK_RANGE, ofd);
      break;
    } catch (err) {
      if (!(err instanceof SysError && err.busy)) throw err;
      if (i >= SPIN_LIMIT) throw new BatonError('UNAVAILABLE', `record ${path} stayed locked; another host may be stuck holding it`, { details: { file: path } });
      Atomics.wait(spinCell, 0, 0, 0.05);
    }
  }
  try {
    return fn();
  } finally {
    unlock(fd, LOCK_RANGE, ofd);
  }
}

/** A token record: 20 zero-padded digits and a newline at offset 0, rewritten in place. */
const RECORD_BYTES = 21;
/** Every read and write of a record goes through this one buffer: they are synchronous, never two at once. */
const recordBuf = Buffer.alloc(RECORD_BYTES);

export function readTokenRecord(fd: number): Token | undefined {
  const n = readSync(fd, recordBuf, 0, RECORD_BYTES, 0);
  const stored = n > 0 ? Number(recordBuf.toString('ascii', 0, n).trim()) : NaN;
  return Number.isSafeInteger(stored) && stored > 0 ? stored : undefined;
}

export function writeTokenRecord(fd: number, token: Token): void {
  recordBuf.write(`${String(token).padStart(RECORD_BYTES - 1, '0')}\n`, 0, 'ascii');
  writeSync(fd, recordBuf, 0, RECORD_BYTES, 0);
}
