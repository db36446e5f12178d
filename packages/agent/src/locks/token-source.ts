import { closeSync, constants, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BatonError, maxToken, type Token } from '@baton/core';
import { writeFileAtomic } from '../state/atomic-file.js';
import { readTokenRecord, withRecordLock, writeTokenRecord } from './token-record.js';

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

/**
 * The newest token issued in an indirect lockspace, kept in `<dir>/.baton-tokens` on the storage
 * the hosts share, updated under an exclusive lock on its byte 0.
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
    return withRecordLock(fd, this.path, this.ofd, () => {
      const token = issue((readTokenRecord(fd) ?? 0) + 1);
      writeTokenRecord(fd, token);
      return token;
    });
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
