import { realpathSync, statSync } from 'node:fs';
import { BatonError, isPlainName, isWithinRoots, lockFileName, type LockspaceKind } from '@baton/core';
import type { LockspaceConfig } from '../config.js';

export interface ResolvedResource {
  /** The resource's canonical identity: its real path, or the plain name as given. */
  identity: string;
  /** The file whose byte 0 carries the lock. */
  lockPath: string;
}

function fsError(err: unknown, name: string): BatonError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') {
    return new BatonError('RESOURCE_NOT_FOUND', `resource "${name}" does not exist`, { details: { resource: name } });
  }
  // A name too long for the file system (a component over NAME_MAX): the request's fault.
  if (code === 'ENAMETOOLONG') {
    return new BatonError('INVALID_REQUEST', `resource "${name.slice(0, 200)}…" is a path too long for the file system`, { details: { resource: name, errno: code } });
  }
  return new BatonError('IO_ERROR', `cannot resolve "${name}": ${(err as Error).message}`, { details: { resource: name, errno: code }, cause: err });
}

/** One configured lockspace: turns a client's resource name into the file to lock. */
export class Lockspace {
  readonly name: string;
  readonly kind: LockspaceKind;
  readonly dir: string | undefined;
  readonly roots: readonly string[];
  /** `dir` ending in a slash: a lock file's path is this and the hash (join() without its normalising, which a canonical dir does not need). */
  private readonly dirPrefix: string | undefined;

  constructor(config: LockspaceConfig) {
    this.name = config.name;
    this.kind = config.kind;
    // Roots are compared against canonical paths, so they must be canonical too.
    this.dir = config.dir === undefined ? undefined : realpathSync(config.dir);
    this.dirPrefix = this.dir === undefined ? undefined : this.dir.endsWith('/') ? this.dir : `${this.dir}/`;
    this.roots = config.roots.map((r) => realpathSync(r));
  }

  private lockPathOf(identity: string): string {
    return this.dirPrefix! + lockFileName(identity);
  }

  /**
   * The identity alone, as resolve() would give it (and with the same errors): a plain name is
   * its own identity, so finding a held lock by it needs no hash of the lock file's name.
   */
  identify(name: string): string {
    return this.kind === 'indirect' && !name.startsWith('/') && isPlainName(name) ? name : this.resolve(name).identity;
  }

  resolve(name: string): ResolvedResource {
    if (!name.startsWith('/')) {
      if (this.kind === 'direct') {
        throw new BatonError('INVALID_REQUEST', `lockspace "${this.name}" locks files directly: "${name}" is not an absolute path`, { details: { resource: name } });
      }
      if (!isPlainName(name)) {
        throw new BatonError('INVALID_REQUEST', `resource name "${name}" must be an absolute path or a printable name without "/"`, { details: { resource: name } });
      }
      return { identity: name, lockPath: this.lockPathOf(name) };
    }
    // realpath resolves "..", "." and every symlink: two spellings of one image are one resource,
    // and a symlink cannot lead a request outside the roots.
    let canonical: string;
    try {
      canonical = realpathSync(name);
    } catch (err) {
      throw fsError(err, name);
    }
    if (this.roots.length > 0 && !isWithinRoots(canonical, this.roots)) {
      throw new BatonError('OUTSIDE_LOCKSPACE', `"${name}" resolves to "${canonical}", outside lockspace "${this.name}"`, {
        details: { resource: name, resolved: canonical, lockspace: this.name, roots: this.roots },
      });
    }
    if (this.kind === 'indirect') return { identity: canonical, lockPath: this.lockPathOf(canonical) };
    const st = statSync(canonical);
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new BatonError('INVALID_REQUEST', `"${canonical}" is neither a regular file nor a block device`, { details: { resource: name, resolved: canonical } });
    }
    return { identity: canonical, lockPath: canonical };
  }
}
