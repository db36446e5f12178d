import { readFileSync } from 'node:fs';
import type { z } from 'zod';
import { asBatonError, exitCodeFor, loadConfig } from '@baton/core';

/**
 * A Baton process's configuration (its JSON file, if named, under the BATON_* environment), or
 * the refusal on stderr and the catalogue's exit code: a process with a bad configuration does
 * not start.
 */
export function loadProcessConfig<S extends z.ZodType>(schema: S, program: string, configPath: string | undefined): z.output<S> {
  try {
    return loadConfig(schema, {
      env: process.env,
      ...(configPath === undefined ? {} : { file: { path: configPath, text: readFileSync(configPath, 'utf8') } }),
    });
  } catch (err) {
    const e = asBatonError(err, 'INVALID_CONFIG');
    process.stderr.write(`${program}: ${e.code}: ${e.message}\n`);
    process.exit(exitCodeFor(e.code));
  }
}
