import { hash } from 'node:crypto';
import { posix } from 'node:path';

/**
 * Lockspace naming rules, pure. An indirect lockspace locks `<dir>/<sha256 hex of identity>`
 * (virtlockd's scheme, but hashing the canonical path rather than the raw string, so two spellings
 * of one image are one resource); a direct lockspace locks the resource file itself.
 */
export const LOCKSPACE_KINDS = ['indirect', 'direct'] as const;
export type LockspaceKind = (typeof LOCKSPACE_KINDS)[number];

export function lockFileName(identity: string): string {
  // The one-shot hash: an acquire computes this, and a Hash object costs more than the digest.
  return hash('sha256', identity, 'hex');
}

/** Whether an absolute, already-canonical path lies inside one of the roots (or is one). */
export function isWithinRoots(canonicalPath: string, roots: readonly string[]): boolean {
  return roots.some((root) => {
    const rel = posix.relative(root, canonicalPath);
    // `..hidden.img` is a file inside the root; only `..` itself or `../…` leaves it.
    return rel === '' || (rel !== '..' && !rel.startsWith('../') && !posix.isAbsolute(rel));
  });
}

/**
 * A resource name that is not a path (an LVM UUID, a lease name) is hashed as given; it must be
 * printable and contain no path separators, so it can never be mistaken for a file.
 */
export function isPlainName(name: string): boolean {
  return /^[\x21-\x7e]+$/.test(name) && !name.includes('/');
}
