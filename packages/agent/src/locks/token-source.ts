import { closeSync, constants, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { BatonError, maxToken, type Token } from '@baton/core';
import { setLock, unlock, SysError } from '../sys/index.js';
import { writeFileAtomic } from '../state/atomic-file.js';
import { LOCK_RANGE } from './lock-file.js';

/**
 * Fencing tokens before the cluster exists: strictly increasing per resource, across agent
 * restarts and, for indirect lockspaces, across every host sharing the lockspace directory.
 *
 * The host-local floor lives in the state dir. It is reserved in blocks (write, fsync, rename
 * once per block), so a grant costs no fsync: after a crash the agent resumes above the last
 * reservation, leaving a gap but never reusing a token.
 */
export class TokenSource {
  private readonly file: string;
  private next: Token;
  private reserved: Token;

  constructor(
    stateDir: string,
    private readonly block: number,
  ) {
    this.file = join(stateDir, 'tokens.json');
    this.reserved = this.load();
    this.next = this.reserved;
  }

  private load(): Token {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 1;
      throw err;
    }
    const parsed: unknown = JSON.parse(text);
    const reserved = (parsed as { reserved?: unknown }).reserved;
    if (typeof reserved !== 'number' || !Number.isSafeInteger(reserved) || reserved < 1) {
      throw new BatonError('STATE_INVALID', `token counter ${this.file} is corrupt; refusing to reuse tokens`, { details: { file: this.file } });
    }
    return reserved;
  }

  /** The next token this source would issue: carried across a re-exec, so no block is skipped. */
  get nextToken(): Token {
    return this.next;
  }

  /** Continue where the previous image stopped, if that is within the persisted reservation. */
  resumeAt(next: Token): void {
    // The previous image issued only tokens below `next`, and reserved past them before issuing.
    if (next >= 1 && next <= this.reserved) this.next = next;
  }

  /** The next token, at least `floor` (the newest token another host recorded). */
  issue(floor: Token = 0): Token {
    const token = maxToken(this.next, floor);
    if (token >= this.reserved) {
      this.reserved = token + this.block;
      writeFileAtomic(this.file, JSON.stringify({ reserved: this.reserved }) + '\n');
    }
    this.next = token + 1;
    return token;
  }
}

const RECORD_BYTES = 21;
const SPIN_LIMIT = 20_000;
const spinCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * The newest token issued in an indirect lockspace, kept in `<dir>/.baton-tokens` on the storage
 * the hosts share, updated under an exclusive lock on its byte 0. The critical section is a read
 * and a write of 21 bytes, so contenders spin briefly instead of blocking the event loop.
 */
export class SharedTokenRecord {
  private fd: number | undefined;

  constructor(
    private readonly path: string,
    private readonly ofd: boolean,
  ) {}

  static in(dir: string, ofd: boolean): SharedTokenRecord {
    return new SharedTokenRecord(join(dir, '.baton-tokens'), ofd);
  }

  /** Issues (through `issue`) a token above the stored one, records it and returns it. */
  advance(issue: (floor: Token) => Token): Token {
    this.fd ??= openSync(this.path, constants.O_RDWR | constants.O_CREAT, 0o644);
    const fd = this.fd;
    this.lock(fd);
    try {
      const buf = Buffer.alloc(RECORD_BYTES);
      const n = readSync(fd, buf, 0, RECORD_BYTES, 0);
      const stored = n > 0 ? Number(buf.toString('ascii', 0, n).trim()) || 0 : 0;
      const token = issue(stored + 1);
      writeSync(fd, `${String(token).padStart(RECORD_BYTES - 1, '0')}\n`, 0, 'ascii');
      return token;
    } finally {
      unlock(fd, LOCK_RANGE, this.ofd);
    }
  }

  private lock(fd: number): void {
    for (let i = 0; i < SPIN_LIMIT; i++) {
      try {
        setLock(fd, 'exclusive', LOCK_RANGE, this.ofd);
        return;
      } catch (err) {
        if (!(err instanceof SysError && err.busy)) throw err;
        Atomics.wait(spinCell, 0, 0, 0.05);
      }
    }
    throw new BatonError('UNAVAILABLE', `token record ${this.path} stayed locked; another host may be stuck holding it`, { details: { file: this.path } });
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
