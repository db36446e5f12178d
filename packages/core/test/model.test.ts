import { describe, expect, it } from 'vitest';
import { canonicalUuid, compareTokens, decideAcquire, isStale, isWithinRoots, lockFileName, isPlainName, UUID } from '../src/index.js';

describe('decideAcquire (seed 000: answered from the table)', () => {
  const owners = (...o: string[]) => new Set(o);
  it('locks what nobody holds', () => expect(decideAcquire(undefined, 'exclusive', 'a')).toEqual({ kind: 'lock' }));
  it('joins a shared holding in shared mode', () => expect(decideAcquire({ mode: 'shared', owners: owners('a') }, 'shared', 'b')).toEqual({ kind: 'join' }));
  it('refuses exclusive against shared and the reverse', () => {
    expect(decideAcquire({ mode: 'shared', owners: owners('a') }, 'exclusive', 'b')).toMatchObject({ kind: 'busy', reason: 'held-shared' });
    expect(decideAcquire({ mode: 'exclusive', owners: owners('a') }, 'shared', 'b')).toMatchObject({ kind: 'busy', reason: 'held-exclusive' });
  });
  it('refuses an owner asking for what it already holds', () =>
    expect(decideAcquire({ mode: 'shared', owners: owners('a') }, 'shared', 'a')).toMatchObject({ kind: 'busy', reason: 'already-owner' }));
});

describe('tokens', () => {
  it('compares numerically and calls older tokens stale', () => {
    expect(compareTokens(9, 10)).toBeLessThan(0);
    expect(compareTokens(10, 10)).toBe(0);
    expect(isStale(9, 10)).toBe(true);
    expect(isStale(10, 10)).toBe(false);
    expect(isStale(11, 10)).toBe(false);
  });
});

describe('lockspace naming', () => {
  it('names lock files by the sha256 hex of the identity, as virtlockd does', () => {
    // `echo -n /var/lib/libvirt/images/a.img | sha256sum`
    expect(lockFileName('/var/lib/libvirt/images/a.img')).toBe('17756750d91ae11b47d32396242a9e833937f02ab48569201fe29b1a94ecb520');
    expect(lockFileName('x')).toMatch(/^[0-9a-f]{64}$/);
    expect(lockFileName('x')).not.toBe(lockFileName('y'));
  });
  it('keeps resources inside their roots, and no sibling that shares a prefix', () => {
    expect(isWithinRoots('/images/a.img', ['/images'])).toBe(true);
    expect(isWithinRoots('/images', ['/images'])).toBe(true);
    expect(isWithinRoots('/images2/a.img', ['/images'])).toBe(false);
    expect(isWithinRoots('/etc/passwd', ['/images'])).toBe(false);
    expect(isWithinRoots('/images/..hidden.img', ['/images'])).toBe(true);
    expect(isWithinRoots('/', ['/images'])).toBe(false);
  });
  it('accepts printable names without slashes as plain names', () => {
    expect(isPlainName('lv-3f2a')).toBe(true);
    expect(isPlainName('a/b')).toBe(false);
    expect(isPlainName('a b')).toBe(false);
    expect(isPlainName('')).toBe(false);
  });
});

describe('UUID (one spelling per VM)', () => {
  const dashed = '6f1c2a9e-0b3d-4e5f-8a7b-9c0d1e2f3a4b';
  it('parses a uuid with or without dashes, in either case, into lower case with dashes', () => {
    for (const spelt of [dashed, dashed.toUpperCase(), dashed.replaceAll('-', ''), dashed.replaceAll('-', '').toUpperCase()]) expect(UUID.parse(spelt)).toBe(dashed);
  });
  it('refuses what is not a uuid, and leaves a name alone where a name or uuid may be given', () => {
    expect(UUID.safeParse(`${dashed}0`).success).toBe(false);
    expect(UUID.safeParse('web-1').success).toBe(false);
    expect(canonicalUuid('Web-1')).toBe('Web-1');
  });
});
