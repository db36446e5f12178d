import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '@baton/agent';
import { configFields, envName } from '@baton/core';

/** docs/configuration.md's table and the agent's schema name the same fields, with the same variables. */
describe('docs/configuration.md', () => {
  const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  const fields = configFields(AgentConfigSchema).map((f) => ({ field: f.path.join('.'), variable: envName(f.path) }));

  it.each(fields)('documents $field as $variable', ({ field, variable }) => {
    expect(doc).toContain(`| \`${field}\` | \`${variable}\` |`);
  });

  it('documents no field the schema does not have', () => {
    const documented = [...doc.matchAll(/^\| `([A-Za-z.]+)` \| `(BATON_[A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(fields.map((f) => f.field).sort());
  });
});
