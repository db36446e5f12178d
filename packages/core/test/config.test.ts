import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { BatonError, envName, loadConfig } from '../src/index.js';

const Schema = z.strictObject({
  stateDir: z.string().default('/var/lib/x'),
  http: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().default(9000) }).prefault({}),
  roots: z.array(z.string()).default([]),
  group: z.union([z.string(), z.number().int()]).optional(),
});

function invalid(fn: () => unknown): BatonError {
  try {
    fn();
  } catch (err) {
    if (err instanceof BatonError) return err;
    throw err;
  }
  throw new Error('expected INVALID_CONFIG');
}

describe('loadConfig', () => {
  it('layers defaults < file < environment', () => {
    const cfg = loadConfig(Schema, {
      file: { path: 'f.json', text: JSON.stringify({ stateDir: '/from/file', http: { port: 1 } }) },
      env: { BATON_HTTP_PORT: '2', BATON_ROOTS: '["/a","/b"]', UNRELATED: 'x' },
    });
    expect(cfg).toEqual({ stateDir: '/from/file', http: { host: '127.0.0.1', port: 2 }, roots: ['/a', '/b'] });
  });

  it('derives environment names from the schema', () => {
    expect(envName(['http', 'port'])).toBe('BATON_HTTP_PORT');
    expect(envName(['stateDir'])).toBe('BATON_STATE_DIR');
  });

  it('takes text fields from the environment as they are, without JSON parsing', () => {
    expect(loadConfig(Schema, { env: { BATON_STATE_DIR: '123' } }).stateDir).toBe('123');
  });

  it('reads a text-or-number field as a number when it is one, as text otherwise', () => {
    expect(loadConfig(Schema, { env: { BATON_GROUP: 'kvm' } }).group).toBe('kvm');
    expect(loadConfig(Schema, { env: { BATON_GROUP: '107' } }).group).toBe(107);
  });

  it('names every bad field and where it came from', () => {
    const err = invalid(() =>
      loadConfig(Schema, { file: { path: 'agent.json', text: JSON.stringify({ stateDir: 5, bogus: true }) }, env: { BATON_HTTP_PORT: '"x"' } }),
    );
    expect(err.code).toBe('INVALID_CONFIG');
    const issues = err.details!.issues as { field: string; source: string }[];
    expect(issues).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ field: 'stateDir', source: 'agent.json' }),
        expect.objectContaining({ field: 'http.port', source: 'BATON_HTTP_PORT' }),
        expect.objectContaining({ field: '(root)', source: 'agent.json' }),
      ]),
    );
    expect(err.message).toContain('bogus');
  });

  it('names bad file fields even when an environment value is unreadable too', () => {
    const err = invalid(() => loadConfig(Schema, { file: { path: 'f.json', text: '{"stateDir":5}' }, env: { BATON_HTTP_PORT: 'eighty' } }));
    const fields = (err.details!.issues as { field: string }[]).map((i) => i.field).sort();
    expect(fields).toEqual(['http.port', 'stateDir']);
  });

  it('refuses an environment value that is not JSON for a non-text field', () => {
    const err = invalid(() => loadConfig(Schema, { env: { BATON_HTTP_PORT: 'eighty' } }));
    expect(err.message).toContain('BATON_HTTP_PORT');
  });

  it('refuses a file that is not a JSON object', () => {
    expect(invalid(() => loadConfig(Schema, { file: { path: 'a.json', text: '[1]' }, env: {} })).message).toContain('a.json');
    expect(invalid(() => loadConfig(Schema, { file: { path: 'b.json', text: '{' }, env: {} })).message).toContain('not valid JSON');
  });
});
