import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AGENT_METHODS, MAX_LOCKSPACE_NAME, MAX_REQUEST_ID, MAX_RESOURCE_NAME, MAX_RESOURCES_PER_REQUEST, PROTOCOL_VERSION, RequestEnvelope } from '@baton/core';
import { parseHotRequest } from '../src/api/hot-request.js';

const ABSENT = Symbol('absent');
type Field = unknown;

/**
 * A field's value: mostly one the schema accepts (ABSENT leaves the key out), so most requests
 * reach the checks of their other fields, otherwise one it refuses.
 */
function field(valid: Field[], invalid: Field[]): fc.Arbitrary<Field> {
  return fc.oneof({ arbitrary: fc.constantFrom(...valid), weight: 6 }, { arbitrary: fc.constantFrom(...invalid), weight: 1 });
}

function object(fields: Record<string, fc.Arbitrary<Field>>): fc.Arbitrary<Record<string, unknown>> {
  return fc.record(fields).map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== ABSENT)));
}

const str = (n: number): string => 'x'.repeat(n);

/** Resource refs near the schema's edges: every bound, wrong types, unknown keys. */
const ref = object({
  name: field(['disk-1', '/images/vm.img', 'x', str(MAX_RESOURCE_NAME)], [ABSENT, '', str(MAX_RESOURCE_NAME + 1), 5, null, ['disk']]),
  lockspace: field([ABSENT, 'images', 'i', str(MAX_LOCKSPACE_NAME)], ['', str(MAX_LOCKSPACE_NAME + 1), null, 3]),
  mode: field([ABSENT, 'exclusive', 'shared'], ['Exclusive', '', null, 1]),
  extra: field([ABSENT], [1, null]),
});

const refs = fc.oneof(
  { arbitrary: fc.array(ref, { minLength: 1, maxLength: 3 }), weight: 6 },
  fc.constantFrom(0, MAX_RESOURCES_PER_REQUEST, MAX_RESOURCES_PER_REQUEST + 1).map((n) => Array.from({ length: n }, (_, i) => ({ name: `disk-${i}` }))),
  fc.constantFrom({}, 'disk', null, [[]], [null], ['disk']),
);

const params = fc.oneof(
  { arbitrary: object({ resources: fc.oneof({ arbitrary: refs, weight: 6 }, fc.constant(ABSENT)), other: field([ABSENT], [true]) }), weight: 6 },
  fc.constantFrom(ABSENT, null, [], 'x', 1),
);

const request = object({
  v: field([PROTOCOL_VERSION], [ABSENT, 0, 2, '1', 1.5, null]),
  id: field([0, 7, Number.MAX_SAFE_INTEGER, 'req-1', 'r', str(MAX_REQUEST_ID)], [ABSENT, -1, 1.5, 2 ** 53, '', str(MAX_REQUEST_ID + 1), null, true]),
  method: field(['acquire', 'release'], [ABSENT, 'hello', 'Acquire', '', 5]),
  params,
  extra: field([ABSENT, 'ignored'], [{}]),
});

/** What dispatch's zod path makes of a request: the parsed envelope and params, or undefined if refused. */
function viaZod(raw: unknown): { id: unknown; method: string; params: unknown } | undefined {
  const env = RequestEnvelope.safeParse(raw);
  if (!env.success || env.data.v !== PROTOCOL_VERSION || (env.data.method !== 'acquire' && env.data.method !== 'release')) return undefined;
  const p = AGENT_METHODS[env.data.method].params.safeParse(env.data.params);
  return p.success ? { id: env.data.id, method: env.data.method, params: p.data } : undefined;
}

/** As dispatch sees a request: parsed from its JSON line. */
const overTheWire = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

describe('parseHotRequest', () => {
  it('accepts only requests the zod schemas accept, and parses them to the same value', () => {
    fc.assert(
      fc.property(fc.oneof({ arbitrary: request, weight: 9 }, fc.jsonValue()), (value) => {
        const raw = overTheWire(value);
        const hot = parseHotRequest(raw);
        if (hot !== undefined) expect(hot).toEqual(viaZod(raw));
      }),
      { numRuns: 20_000 },
    );
  });

  it('takes the requests of a grant cycle, so the hand check is the path they actually run', () => {
    const lines = [
      { v: 1, id: 1, method: 'acquire', params: { resources: [{ name: 'disk-1' }] } },
      { v: 1, id: 'a', method: 'acquire', params: { resources: [{ name: '/images/a.img', lockspace: 'images', mode: 'shared' }, { name: 'lv-0' }] } },
      { v: 1, id: 2, method: 'release', params: { resources: [{ name: 'disk-1' }] } },
    ];
    for (const line of lines) {
      const raw = overTheWire(line);
      expect(parseHotRequest(raw)).toEqual(viaZod(raw));
      expect(parseHotRequest(raw)).toBeDefined();
    }
  });

  it('leaves an own "__proto__" key (which JSON.parse makes a plain key) to zod', () => {
    for (const text of [
      '{"v":1,"id":1,"method":"acquire","params":{"resources":[{"name":"d","__proto__":{"mode":"shared"}}]}}',
      '{"v":1,"id":1,"method":"acquire","params":{"resources":[{"name":"d"}],"__proto__":{}}}',
    ]) {
      expect(parseHotRequest(JSON.parse(text))).toBeUndefined();
    }
  });
});
