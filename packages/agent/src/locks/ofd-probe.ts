import { closeSync, openSync, unlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { setLock, SysError, unlock } from '../sys/index.js';
import { LOCK_RANGE } from './lock-file.js';

/**
 * Whether the kernel has open-file-description locks (Linux ≥ 3.15). Without them the agent
 * uses classic POSIX locks, which closing any descriptor of the file would drop: the lock table
 * never opens a held file twice, so that stays safe (seed 000), only less forgiving.
 */
export function probeOfdLocks(dir: string): boolean {
  const path = join(dir, `.ofd-probe-${process.pid}`);
  const fd = openSync(path, 'w', 0o600);
  try {
    setLock(fd, 'exclusive', LOCK_RANGE, true);
    unlock(fd, LOCK_RANGE, true);
    return true;
  } catch (err) {
    if (err instanceof SysError && err.errno === constants.errno.EINVAL) return false;
    throw err;
  } finally {
    closeSync(fd);
    unlinkSync(path);
  }
}
