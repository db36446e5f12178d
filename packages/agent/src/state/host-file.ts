import { readFileSync } from 'node:fs';
import type { z } from 'zod';

/**
 * A small JSON file of the state dir that names the host it belongs to. A missing file is no
 * problem; one that is unreadable, not JSON, of an unknown format or of another host is ignored
 * and said so (the caller logs it), never half-used.
 */
export function readHostFile<S extends z.ZodType<{ host: string }>>(path: string, schema: S, host: string): { value?: z.infer<S>; problem?: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    return { problem: (err as Error).message };
  }
  let parsed;
  try {
    parsed = schema.safeParse(JSON.parse(text));
  } catch {
    return { problem: `${path} is not JSON` };
  }
  if (!parsed.success) return { problem: `${path} has an unknown format` };
  if (parsed.data.host !== host) return { problem: `${path} belongs to host ${parsed.data.host}` };
  return { value: parsed.data };
}
