import { BatonError } from './errors.js';
import { compareTokens, type Token } from './fencing.js';

/** Where storage keeps the highest token it has accepted (a sidecar record next to a disk). */
export interface FenceStore {
  read(): Token | undefined;
  write(token: Token): void;
}

/**
 * Storage-side fencing for an exclusive resource: a write carrying a token below the highest one
 * the storage has seen is refused, so a holder that lost its lease cannot corrupt the disk even if
 * it has not noticed yet. The caller runs `admit` and the write under one lock on the store.
 */
export class FenceGuard {
  constructor(
    private readonly store: FenceStore,
    private readonly resource: string,
  ) {}

  admit(token: Token): void {
    const highest = this.store.read();
    if (highest !== undefined && compareTokens(token, highest) < 0) {
      throw new BatonError('STALE_TOKEN', `write to ${this.resource} with token ${token} refused: token ${highest} has been seen`, {
        details: { resource: this.resource, presented: token, current: highest },
      });
    }
    if (highest === undefined || compareTokens(token, highest) > 0) this.store.write(token);
  }
}

/**
 * A shared resource has several valid grants at once, each with its own token; the newest one says
 * nothing about the others. The check is membership in the set of grants still valid (from etcd).
 */
export function admitShared(token: Token, valid: ReadonlySet<Token>, resource: string): void {
  if (!valid.has(token)) {
    throw new BatonError('STALE_TOKEN', `token ${token} is no longer a valid grant of ${resource}`, { details: { resource, presented: token, valid: [...valid] } });
  }
}
