import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// tmpfs makes fsync nearly free: etcd txns take ~0.5 ms there against ~0.8 ms on disk (DESIGN §10).
const TEMP_ROOT = ((): string => {
  try {
    if (statSync('/dev/shm').isDirectory()) return '/dev/shm';
  } catch {
    // no /dev/shm: fall back to the system temp dir
  }
  return tmpdir();
})();

/** A fresh directory under /dev/shm when it exists, else the OS temp dir; the caller removes it. */
export function makeTempDir(prefix: string): Promise<string> {
  return mkdtemp(join(TEMP_ROOT, `baton-${prefix}-`));
}

/** Removes `dir` and everything in it; a missing dir is fine. */
export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}
