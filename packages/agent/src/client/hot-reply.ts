import { GrantSchema, LOCK_MODES, type AgentMethod, type Grant, type LockMode, type RequestId } from '@baton/core';
import { isRecord, isRequestId } from '../api/hot-request.js';

// The replies of a grant cycle, checked by hand instead of by the envelope's and the result's zod
// schemas, which cost the client a few microseconds on every grant. What these return, the
// schemas accept and parse to the same value (the agent's tests compare the two on generated
// replies); anything else returns undefined and goes through zod, which decides and explains.
// `raw` is a parsed JSON value.

/** A successful reply's id and result, as ReplyEnvelope parses them. */
export function parseOkReply(raw: unknown): { id: RequestId | null; result: unknown } | undefined {
  if (!isRecord(raw) || raw['ok'] !== true || !Number.isSafeInteger(raw['v']) || !Object.hasOwn(raw, 'result')) return undefined;
  const id = raw['id'];
  return id === null || isRequestId(id) ? { id, result: raw['result'] } : undefined;
}

/** GrantSchema's fields, every one of them checked in isGrant. */
const GRANT_FIELDS = Object.keys(GrantSchema.shape).length;

/** A grant with exactly GrantSchema's fields (zod would strip any other, so such a grant goes to zod). */
function isGrant(g: unknown): g is Grant {
  if (!isRecord(g) || Object.keys(g).length !== GRANT_FIELDS) return false;
  const { lockspace, resource, mode, token, lockPath, since } = g;
  return (
    typeof lockspace === 'string' &&
    typeof resource === 'string' &&
    LOCK_MODES.includes(mode as LockMode) &&
    Number.isSafeInteger(token) &&
    (token as number) > 0 &&
    typeof lockPath === 'string' &&
    typeof since === 'string'
  );
}

const GRANT_LIST = { acquire: 'grants', release: 'released' } as const;

/** The result of an acquire (`{ grants }`) or a release (`{ released }`), as the method's result schema parses it. */
export function parseGrantsResult(method: AgentMethod, result: unknown): { grants: Grant[] } | { released: Grant[] } | undefined {
  const key = method === 'acquire' || method === 'release' ? GRANT_LIST[method] : undefined;
  if (key === undefined || !isRecord(result)) return undefined;
  for (const k in result) if (k !== key) return undefined;
  const list = result[key];
  return Array.isArray(list) && list.every(isGrant) ? (result as { grants: Grant[] } | { released: Grant[] }) : undefined;
}
