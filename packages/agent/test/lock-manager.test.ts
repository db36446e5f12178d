import { randomUUID } from 'node:crypto';
import { closeSync, constants, existsSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LOCK_RANGE } from '../src/locks/lock-file.js';
import { LockManager } from '../src/locks/lock-manager.js';
import { Lockspace } from '../src/locks/lockspace.js';
import { TokenSource } from '../src/locks/token-source.js';
import { tryLock, unlock } from '../src/sys/index.js';

const KEEP_MS = 20;
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** An indirect lockspace `images`, and a direct one `files` whose root is the same lock dir. */
function manager(ofd: boolean): { locks: LockManager; lockDir: string; failures: unknown[] } {
  const root = mkdtempSync(join(tmpdir(), 'baton-lock-manager-'));
  const lockDir = join(root, 'locks');
  mkdirSync(lockDir);
  mkdirSync(join(root, 'state'));
  const failures: unknown[] = [];
  const locks = new LockManager({
    lockspaces: [new Lockspace({ name: 'images', kind: 'indirect', dir: lockDir, roots: [] }), new Lockspace({ name: 'files', kind: 'direct', roots: [lockDir] })],
    defaultLockspace: 'images',
    tokens: new TokenSource(join(root, 'state'), 100),
    ofd,
    unusedKeepMs: KEEP_MS,
    onRemoveFailed: (_path, err) => failures.push(err),
  });
  cleanups.push(() => {
    locks.close();
    rmSync(root, { recursive: true, force: true });
  });
  return { locks, lockDir, failures };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Past the keep time, and the removal's timer has run. */
const afterKeep = (): Promise<void> => sleep(KEEP_MS * 5);

/** Whether another open file description could lock the file now (OFD locks conflict within a process too). */
function lockableByOthers(path: string): boolean {
  const fd = openSync(path, constants.O_RDWR);
  try {
    const got = tryLock(fd, 'exclusive', LOCK_RANGE, true);
    if (got) unlock(fd, LOCK_RANGE, true);
    return got;
  } finally {
    closeSync(fd);
  }
}

/** This process's classic POSIX locks on a file, from /proc/locks (the holder cannot see them with F_GETLK). */
function posixLocksOn(path: string): number {
  const ino = String(statSync(path).ino);
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .filter((l) => /\bPOSIX\b/.test(l) && l.split(/\s+/)[4] === String(process.pid) && l.split(/\s+/)[5]?.endsWith(`:${ino}`)).length;
}

describe('LockManager: indirect lock files after release', () => {
  it('keeps a released lock file for the next acquire, which reopens the same file, and removes it once unused', async () => {
    const { locks, failures } = manager(true);
    const owner = randomUUID();
    const [grant] = locks.acquire(owner, [{ name: 'disk-1', mode: 'exclusive' }]);
    const ino = statSync(grant!.lockPath).ino;
    locks.release(owner, [{ name: 'disk-1', mode: 'exclusive' }]);
    expect(lockableByOthers(grant!.lockPath)).toBe(true);

    const [again] = locks.acquire(owner, [{ name: 'disk-1', mode: 'exclusive' }]);
    expect(again!.lockPath).toBe(grant!.lockPath);
    expect(statSync(again!.lockPath).ino).toBe(ino);
    expect(again!.token).toBeGreaterThan(grant!.token);
    // Held: never removed, however long it is held.
    await afterKeep();
    expect(existsSync(again!.lockPath)).toBe(true);
    expect(lockableByOthers(again!.lockPath)).toBe(false);

    locks.release(owner);
    await afterKeep();
    expect(existsSync(again!.lockPath)).toBe(false);
    expect(failures).toEqual([]);
  });

  it('leaves a released lock file that another holder has locked meanwhile', async () => {
    const { locks } = manager(true);
    const owner = randomUUID();
    const [grant] = locks.acquire(owner, [{ name: 'disk-1', mode: 'shared' }]);
    locks.release(owner);
    const other = openSync(grant!.lockPath, constants.O_RDWR);
    cleanups.push(() => closeSync(other));
    expect(tryLock(other, 'shared', LOCK_RANGE, true)).toBe(true);
    await afterKeep();
    expect(existsSync(grant!.lockPath)).toBe(true);
  });

  it('never opens a released lock file that it holds under another name (seed 000, classic POSIX locks)', async () => {
    const { locks, lockDir } = manager(false);
    const owner = randomUUID();
    const [grant] = locks.acquire(owner, [{ name: 'disk-1', mode: 'exclusive' }]);
    locks.release(owner);
    // The same file through a hard link in a direct lockspace: one open+close of the kept path
    // by the removal would drop this classic lock.
    const link = join(lockDir, 'link');
    linkSync(grant!.lockPath, link);
    locks.acquire(owner, [{ name: link, lockspace: 'files', mode: 'exclusive' }]);
    expect(posixLocksOn(link)).toBe(1);
    await afterKeep();
    expect(posixLocksOn(link)).toBe(1);
    expect(existsSync(grant!.lockPath)).toBe(true);
  });

  it('removes what is still unused at once when asked (the agent stops or re-executes)', () => {
    const { locks } = manager(true);
    const owner = randomUUID();
    const grants = locks.acquire(owner, [
      { name: 'disk-1', mode: 'exclusive' },
      { name: 'disk-2', mode: 'exclusive' },
    ]);
    locks.release(owner, [{ name: 'disk-1', mode: 'exclusive' }]);
    locks.removeUnusedLockFiles();
    expect(grants.map((g) => existsSync(g.lockPath))).toEqual([false, true]);
  });
});
