import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { BatonError, ERROR_CATALOGUE, ERROR_CODES, toErrorBody } from '../src/index.js';

describe('the error catalogue', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');

  it.each(ERROR_CODES)('documents %s in docs/errors.md with its exit status and HTTP status', (code) => {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
    expect(row, `docs/errors.md has no row for ${code}`).toBeDefined();
    const { exit, http } = ERROR_CATALOGUE[code];
    expect(row).toContain(`| ${exit} |`);
    expect(row).toContain(`| ${http} |`);
  });

  it('documents no code that does not exist', () => {
    const documented = [...doc.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual([...ERROR_CODES].sort());
  });

  it('keeps a BatonError’s code and details on the wire, and calls anything else INTERNAL', () => {
    expect(toErrorBody(new BatonError('RESOURCE_BUSY', 'held', { details: { resource: 'x' } }))).toEqual({ code: 'RESOURCE_BUSY', message: 'held', details: { resource: 'x' } });
    expect(toErrorBody(new Error('boom'))).toEqual({ code: 'INTERNAL', message: 'boom' });
    expect(BatonError.fromBody({ code: 'DENIED', message: 'no' })).toMatchObject({ code: 'DENIED', message: 'no' });
  });
});
