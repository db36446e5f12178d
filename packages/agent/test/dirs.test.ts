import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeDirs } from '../src/state/dirs.js';

describe('makeDirs (the agent’s state, lock and socket directories)', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'baton-dirs-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('creates every missing component with the mode asked, and accepts one that exists', () => {
    const deep = join(root, 'a', 'b', 'c');
    makeDirs(deep, 0o700);
    for (const dir of [join(root, 'a'), join(root, 'a', 'b'), deep]) expect(statSync(dir).mode & 0o777).toBe(0o700);
    makeDirs(deep, 0o700);
    expect(statSync(deep).isDirectory()).toBe(true);
  });

  it('refuses a path through a file, or that is a file', () => {
    writeFileSync(join(root, 'file'), '');
    expect(() => makeDirs(join(root, 'file', 'x'), 0o700)).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
    expect(() => makeDirs(join(root, 'file'), 0o700)).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
  });

  it('fails at once where mkdir says ENOENT under a parent that exists (under /proc), where Node’s recursive mkdir spins for ever', () => {
    expect(() => makeDirs(`/proc/${process.pid}/baton-state`, 0o700)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
  });
});
