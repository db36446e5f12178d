import {
  MAX_LOCKSPACE_NAME,
  MAX_REQUEST_ID,
  MAX_RESOURCE_NAME,
  MAX_RESOURCES_PER_REQUEST,
  PROTOCOL_VERSION,
  type AgentParsedParams,
  type RequestId,
  type ResourceRef,
} from '@baton/core';

export type HotRequest =
  | { id: RequestId; method: 'acquire'; params: AgentParsedParams<'acquire'> }
  | { id: RequestId; method: 'release'; params: AgentParsedParams<'release'> };

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(o: Record<string, unknown>, allowed: readonly string[]): boolean {
  for (const k in o) if (!allowed.includes(k)) return false;
  return true;
}

/** What the RequestId schema accepts. */
export function isRequestId(v: unknown): v is RequestId {
  return typeof v === 'string' ? v.length >= 1 && v.length <= MAX_REQUEST_ID : Number.isSafeInteger(v) && (v as number) >= 0;
}

const RESOURCE_KEYS = ['name', 'lockspace', 'mode'] as const;

function resources(v: unknown): ResourceRef[] | undefined {
  if (!Array.isArray(v) || v.length < 1 || v.length > MAX_RESOURCES_PER_REQUEST) return undefined;
  const refs: ResourceRef[] = [];
  for (const r of v) {
    if (!isRecord(r) || !onlyKeys(r, RESOURCE_KEYS)) return undefined;
    const { name, lockspace, mode = 'exclusive' } = r;
    if (typeof name !== 'string' || name.length < 1 || name.length > MAX_RESOURCE_NAME || name.includes('\0')) return undefined;
    if (mode !== 'exclusive' && mode !== 'shared') return undefined;
    if (lockspace === undefined) {
      refs.push({ name, mode });
      continue;
    }
    if (typeof lockspace !== 'string' || lockspace.length < 1 || lockspace.length > MAX_LOCKSPACE_NAME) return undefined;
    refs.push({ name, lockspace, mode });
  }
  return refs;
}

/**
 * The two requests of every grant cycle (acquire, and release of named resources), checked by
 * hand instead of by the envelope's and the method's zod schemas, which cost more than the rest
 * of the request's parsing. `raw` is a parsed JSON value. A request this returns is one the
 * schemas accept, parsed to the same params (the agent's tests compare the two on generated
 * requests); anything else, well-formed or not, returns undefined and goes through zod, which
 * decides and explains.
 */
export function parseHotRequest(raw: unknown): HotRequest | undefined {
  if (!isRecord(raw) || raw['v'] !== PROTOCOL_VERSION) return undefined;
  const { id, method, params } = raw;
  if (!isRequestId(id) || (method !== 'acquire' && method !== 'release')) return undefined;
  if (!isRecord(params) || !onlyKeys(params, ['resources'])) return undefined;
  const refs = resources(params['resources']);
  if (refs === undefined) return undefined;
  return { id, method, params: { resources: refs } };
}
