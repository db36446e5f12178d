import type { IKeyValue } from 'etcd3';
import type { z } from 'zod';

/**
 * A stored value read through its schema: undefined when the key is absent, not JSON, or not of
 * the schema. Callers decide what an unreadable value means; none of them guesses at its content.
 */
export function parseValue<T>(schema: z.ZodType<T>, kv: IKeyValue | undefined): T | undefined {
  if (kv === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(kv.value.toString());
  } catch {
    return undefined;
  }
  const parsed = schema.safeParse(json);
  return parsed.success ? parsed.data : undefined;
}
