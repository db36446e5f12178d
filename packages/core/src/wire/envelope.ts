import { z } from 'zod';
import { BatonError, ERROR_CODES, type ErrorCode, type ErrorDetails } from '../errors.js';

/**
 * The envelope every request and reply carries, on the agent socket (newline-delimited JSON)
 * and on NATS. Versioned from the first day: a peer refuses versions it does not speak.
 */
export const PROTOCOL_VERSION = 1 as const;
export const MAX_LINE_BYTES = 1024 * 1024;

/** Longest string request id (the agent's hand-checked requests use it too). */
export const MAX_REQUEST_ID = 128;

export const RequestId = z.union([z.string().min(1).max(MAX_REQUEST_ID), z.number().int().nonnegative()]);
export type RequestId = z.infer<typeof RequestId>;

/** Only the fields needed to route; params are validated by the method's own schema. */
export const RequestEnvelope = z.object({
  v: z.number().int(),
  id: RequestId,
  method: z.string().min(1).max(64),
  params: z.unknown().optional(),
});
export type RequestEnvelope = z.infer<typeof RequestEnvelope>;

export const ErrorBodySchema = z.object({
  code: z.enum(ERROR_CODES as [string, ...string[]]),
  message: z.string(),
  details: z.record(z.string(), z.unknown()).optional(),
});

export const ReplyEnvelope = z.discriminatedUnion('ok', [
  z.object({ v: z.number().int(), id: RequestId.nullable(), ok: z.literal(true), result: z.unknown() }),
  z.object({ v: z.number().int(), id: RequestId.nullable(), ok: z.literal(false), error: ErrorBodySchema }),
]);
export type ReplyEnvelope = z.infer<typeof ReplyEnvelope>;

/** Zod's issues as one line a person can act on: `field: problem; field: problem`. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}

/**
 * `value` as `schema` has it, or the one refusal every boundary gives: a BatonError with `code`
 * (INVALID_REQUEST unless said) whose message is `what: ` and the issues.
 */
export function parseOrRefuse<S extends z.ZodType>(schema: S, value: unknown, what: string, code: ErrorCode = 'INVALID_REQUEST', details?: ErrorDetails): z.output<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new BatonError(code, `${what}: ${describeIssues(parsed.error)}`, details === undefined ? undefined : { details });
  return parsed.data;
}
