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
  /** Indirect lock files are created on demand (and removed when provably unused). */
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
 * (its last holder removed it as it released).
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

/**
 * Unlock and close. A created lock file is unlinked first when it is provably unused: this agent
 * holds it exclusively, or can upgrade its shared lock to exclusive. Anyone who opened the file
 * in the meantime finds it gone after locking and retries (see lockFile).
 */
export function unlockFile(file: LockedFile, path: string, mode: LockMode, opts: LockFileOptions): void {
  try {
    if (opts.create && (mode === 'exclusive' || tryLock(file.fd, 'exclusive', LOCK_RANGE, opts.ofd)) && sameFile(file, path)) {
      unlinkSync(path);
    }
  } finally {
    // Closing drops the lock even if unlock failed; unlocking first keeps the order explicit.
    try {
      unlock(file.fd, LOCK_RANGE, opts.ofd);
    } finally {
      closeSync(file.fd);
    }
  }
}
