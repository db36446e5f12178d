import { closeSync, constants, fstatSync, openSync, statSync, unlinkSync } from 'node:fs';
import type { LockMode } from '@baton/core';
import { tryLock, unlock, type ByteRange } from '../sys/index.js';

/**
 * virtlockd's range: byte 0, length 1. QEMU takes its own locks at bytes 100+ and 200+ of an
 * image, so a whole-file lock would break QEMU's image locking.
 */
export const LOCK_RANGE: ByteRange = { start: 0, len: 1 };

export interface LockedFile {
  fd: number;
  dev: bigint;
  ino: bigint;
}

export interface LockFileOptions {
  /** Indirect lock files are created on demand (and removed once unused, see removeIfUnused). */
  create: boolean;
  ofd: boolean;
}

const MAX_REPLACED_RETRIES = 64;

function sameFile(a: { dev: bigint; ino: bigint }, path: string): boolean {
  try {
    const st = statSync(path, { bigint: true });
    return st.dev === a.dev && st.ino === a.ino;
  } catch {
    return false;
  }
}

/**
 * Open and lock; undefined when another holder has it. For created files: open → fstat → lock →
 * stat(path) → compare, and retry if the file was unlinked or replaced between open and lock
 * (an agent removed it as unused, see removeIfUnused).
 */
export function lockFile(path: string, mode: LockMode, opts: LockFileOptions): LockedFile | undefined {
  const flags = opts.create ? constants.O_RDWR | constants.O_CREAT : mode === 'exclusive' ? constants.O_RDWR : constants.O_RDONLY;
  for (let attempt = 0; attempt < MAX_REPLACED_RETRIES; attempt++) {
    // Node opens with O_CLOEXEC: no child process (a sim VM, a killpath) inherits a lock.
    const fd = openSync(path, flags, 0o600);
    let locked = false;
    try {
      const st = fstatSync(fd, { bigint: true });
      locked = tryLock(fd, mode, LOCK_RANGE, opts.ofd);
      if (!locked) return undefined;
      if (!opts.create || sameFile(st, path)) return { fd, dev: st.dev, ino: st.ino };
    } finally {
      if (!locked) closeSync(fd);
    }
    unlock(fd, LOCK_RANGE, opts.ofd);
    closeSync(fd);
  }
  throw new Error(`lock file ${path} kept being replaced (${MAX_REPLACED_RETRIES} attempts)`);
}

/** Unlock and close. */
export function unlockFile(file: LockedFile, ofd: boolean): void {
  // Closing drops the lock even if unlock failed; unlocking first keeps the order explicit.
  try {
    unlock(file.fd, LOCK_RANGE, ofd);
  } finally {
    closeSync(file.fd);
  }
}

/**
 * Remove a created lock file if it is provably unused: an exclusive lock on it is granted (no one
 * holds it, on any host), and the path still names the file locked. The caller makes sure this
 * process does not hold it (seed 000: a held file is never opened a second time). Anyone who
 * opened the file meanwhile finds it gone after locking and retries (see lockFile).
 */
export function removeIfUnused(path: string, ofd: boolean): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!tryLock(fd, 'exclusive', LOCK_RANGE, ofd)) return;
    try {
      if (sameFile(st, path)) unlinkSync(path);
    } finally {
      unlock(fd, LOCK_RANGE, ofd);
    }
  } finally {
    closeSync(fd);
  }
}
