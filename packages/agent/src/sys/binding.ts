import { createRequire } from 'node:module';
import { constants } from 'node:os';

/**
 * The project's own N-API binding (native/baton_sys.c), loaded here and nowhere else: byte-range
 * fcntl locks (OFD or classic), close-on-exec control, SO_PEERCRED and a non-blocking waitpid. See docs/adr/0001.
 * Calls are synchronous and return -errno rather than throwing.
 */
interface NativeBinding {
  setlk(fd: number, kind: 0 | 1 | 2, start: number, len: number, ofd: boolean): number;
  setCloexec(fd: number, on: boolean): number;
  peerCred(fd: number): [number, number, number] | number;
  reapExited(pid: number): number;
}

const native = createRequire(import.meta.url)('../../native/build/Release/baton_sys.node') as NativeBinding;

export type LockKind = 'shared' | 'exclusive';
const KIND = { shared: 1, exclusive: 2 } as const;

export interface ByteRange {
  start: number;
  len: number;
}

/** The errno a failed call returned, named (EAGAIN, EACCES, ...). */
export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call} failed: ${errnoName(errno)}`);
  }
  get busy(): boolean {
    return this.errno === constants.errno.EAGAIN || this.errno === constants.errno.EACCES;
  }
}

export function errnoName(errno: number): string {
  return Object.entries(constants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
}

function check(call: string, rc: number): void {
  if (rc < 0) throw new SysError(call, -rc);
}

/** Non-blocking lock of a byte range; throws SysError (busy when EAGAIN/EACCES). */
export function setLock(fd: number, kind: LockKind, range: ByteRange, ofd: boolean): void {
  check(ofd ? 'fcntl(F_OFD_SETLK)' : 'fcntl(F_SETLK)', native.setlk(fd, KIND[kind], range.start, range.len, ofd));
}

/** Non-blocking lock attempt; false when another holder conflicts. */
export function tryLock(fd: number, kind: LockKind, range: ByteRange, ofd: boolean): boolean {
  const rc = native.setlk(fd, KIND[kind], range.start, range.len, ofd);
  if (rc === 0) return true;
  const err = new SysError(ofd ? 'fcntl(F_OFD_SETLK)' : 'fcntl(F_SETLK)', -rc);
  if (err.busy) return false;
  throw err;
}

export function unlock(fd: number, range: ByteRange, ofd: boolean): void {
  check('fcntl(F_UNLCK)', native.setlk(fd, 0, range.start, range.len, ofd));
}

export function setCloexec(fd: number, on: boolean): void {
  check('fcntl(F_SETFD)', native.setCloexec(fd, on));
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export function peerCred(fd: number): PeerCred {
  const r = native.peerCred(fd);
  if (typeof r === 'number') throw new SysError('getsockopt(SO_PEERCRED)', -r);
  return { pid: r[0], uid: r[1], gid: r[2] };
}

/**
 * Waits for `pid` if it is a child of this process that has exited (a zombie), without blocking.
 * After a re-exec Node no longer knows the children an earlier image spawned, and nothing else
 * would ever wait for them. `running`: a child not reapable yet, which includes one that shows as a
 * zombie while its other threads still exit (a Node process has several).
 */
export function reapChild(pid: number): 'reaped' | 'running' | 'not-ours' {
  const rc = native.reapExited(pid);
  if (rc === -constants.errno.ECHILD) return 'not-ours';
  if (rc < 0) throw new SysError('waitpid', -rc);
  return rc === pid ? 'reaped' : 'running';
}
