import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BatonError } from '@baton/core';
import { SharedTokenRecord, TokenSource } from '../src/locks/token-source.js';

const dirs: string[] = [];
function dir(): string {
  const d = mkdtempSync(join(tmpdir(), 'baton-tokens-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('TokenSource', () => {
  it('issues increasing tokens and persists one reservation per block, not one per token', () => {
    const d = dir();
    const t = new TokenSource(d, 10);
    expect([t.issue(), t.issue(), t.issue()]).toEqual([1, 2, 3]);
    expect(JSON.parse(readFileSync(join(d, 'tokens.json'), 'utf8'))).toEqual({ reserved: 11 });
    for (let i = 0; i < 8; i++) t.issue();
    expect(JSON.parse(readFileSync(join(d, 'tokens.json'), 'utf8'))).toEqual({ reserved: 21 });
  });

  it('never reuses a token after a crash: a new source starts above the last reservation', () => {
    const d = dir();
    const first = new TokenSource(d, 100);
    const issued = [first.issue(), first.issue()];
    const after = new TokenSource(d, 100).issue();
    expect(after).toBeGreaterThan(Math.max(...issued));
  });

  it('continues from a re-exec’s recorded next token, within the reservation', () => {
    const d = dir();
    const a = new TokenSource(d, 100);
    a.issue();
    a.issue();
    const b = new TokenSource(d, 100);
    b.resumeAt(a.nextToken);
    expect(b.issue()).toBe(3);
  });

  it('issues at least the floor another host recorded', () => {
    const t = new TokenSource(dir(), 10);
    expect(t.issue(500)).toBe(500);
    expect(t.issue()).toBe(501);
  });

  it('refuses a corrupt counter instead of starting again from 1', () => {
    const d = dir();
    writeFileSync(join(d, 'tokens.json'), '{"reserved":"x"}');
    expect(() => new TokenSource(d, 10)).toThrow(BatonError);
  });
});

describe('SharedTokenRecord', () => {
  it('keeps the newest token of a lockspace, so two hosts’ counters stay ordered', () => {
    const shared = dir();
    const hostA = new TokenSource(dir(), 10);
    const hostB = new TokenSource(dir(), 10);
    const recA = SharedTokenRecord.in(shared, true);
    const recB = SharedTokenRecord.in(shared, true);
    const tokens = [recA.advance((f) => hostA.issue(f)), recB.advance((f) => hostB.issue(f)), recA.advance((f) => hostA.issue(f)), recB.advance((f) => hostB.issue(f))];
    expect(tokens).toEqual([1, 2, 3, 4]);
    recA.close();
    recB.close();
  });
});
