import { mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { BatonError } from '@baton/core';

/**
 * `mkdir -p`, one component at a time, each created with `mode`. Node's own recursive mkdir
 * spins for ever at full CPU where mkdir answers ENOENT although the parent exists (a path under
 * /proc: measured with Node 24.21, sync and async alike), so an agent configured with such a
 * path hung at start; this fails with that ENOENT instead.
 */
export function makeDirs(path: string, mode: number): void {
  const missing: string[] = [];
  for (let at = path; statSync(at, { throwIfNoEntry: false }) === undefined; at = dirname(at)) {
    missing.push(at);
    if (dirname(at) === at) break;
  }
  for (const dir of missing.reverse()) {
    try {
      mkdirSync(dir, { mode });
    } catch (err) {
      // Made meanwhile by someone else: what was wanted.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  if (!statSync(path).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${path}'`), { code: 'ENOTDIR', path });
}

/** A directory the configuration names (`field`), made if missing: one that cannot be is the configuration's fault. */
export function makeConfiguredDir(field: string, path: string, mode: number): void {
  try {
    makeDirs(path, mode);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new BatonError('INVALID_CONFIG', `${field}: ${path} cannot be made a directory (${e.code ?? e.message})`, { details: { field, path, errno: e.code }, cause: err });
  }
}
