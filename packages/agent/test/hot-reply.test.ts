import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AGENT_METHODS, MAX_REQUEST_ID, ReplyEnvelope } from '@baton/core';
import { parseGrantsResult, parseOkReply } from '../src/client/hot-reply.js';

const ABSENT = Symbol('absent');

/** A field's value: mostly one the schema accepts (ABSENT leaves the key out), otherwise one it refuses. */
function field(valid: unknown[], invalid: unknown[]): fc.Arbitrary<unknown> {
  return fc.oneof({ arbitrary: fc.constantFrom(...valid), weight: 6 }, { arbitrary: fc.constantFrom(...invalid), weight: 1 });
}

function object(fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<Record<string, unknown>> {
  return fc.record(fields).map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== ABSENT)));
}

/** As the client sees a reply: parsed from its JSON line. */
const overTheWire = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

const reply = object({
  v: field([1, 0, 2, -3], [ABSENT, 1.5, '1', null, 2 ** 53]),
  id: field([null, 0, 7, Number.MAX_SAFE_INTEGER, 'r', 'x'.repeat(MAX_REQUEST_ID)], [ABSENT, -1, 1.5, 2 ** 53, '', 'x'.repeat(MAX_REQUEST_ID + 1), true]),
  ok: field([true], [ABSENT, false, 'true', 1, null]),
  result: field([null, 0, 'x', { grants: [] }, [1, 2]], [ABSENT]),
  error: field([ABSENT], [{ code: 'RESOURCE_BUSY', message: 'busy' }, 'x']),
  extra: field([ABSENT, 'ignored'], [{}]),
});

const grant = object({
  lockspace: field(['images', ''], [ABSENT, 1, null]),
  resource: field(['disk-1', '/images/a.img'], [ABSENT, 2]),
  mode: field(['exclusive', 'shared'], [ABSENT, 'Shared', null]),
  token: field([1, 42, Number.MAX_SAFE_INTEGER], [ABSENT, 0, -1, 1.5, 2 ** 53, '3']),
  lockPath: field(['/locks/ab', ''], [ABSENT, false]),
  since: field(['2026-11-21T19:00:00.000Z'], [ABSENT, 0]),
  extra: field([ABSENT], ['stripped by zod']),
});

const result = fc.oneof(
  { arbitrary: object({ grants: field([[]], [ABSENT]).chain((v) => (v === ABSENT ? fc.constant(ABSENT) : fc.array(grant, { maxLength: 3 }))), extra: field([ABSENT], [1]) }), weight: 4 },
  { arbitrary: object({ released: field([[]], [ABSENT]).chain((v) => (v === ABSENT ? fc.constant(ABSENT) : fc.array(grant, { maxLength: 3 }))), extra: field([ABSENT], [1]) }), weight: 4 },
  fc.constantFrom({ grants: {} }, { released: null }, null, [], 'x'),
);

describe('parseOkReply', () => {
  it('accepts only successful replies the envelope schema accepts, with the same id and result', () => {
    fc.assert(
      fc.property(fc.oneof({ arbitrary: reply, weight: 9 }, fc.jsonValue()), (value) => {
        const raw = overTheWire(value);
        const ok = parseOkReply(raw);
        if (ok === undefined) return;
        const parsed = ReplyEnvelope.safeParse(raw);
        expect(parsed.success && parsed.data.ok).toBe(true);
        expect(ok).toEqual({ id: parsed.data!.id, result: (parsed.data as { result: unknown }).result });
      }),
      { numRuns: 20_000 },
    );
  });

  it('takes the agent’s reply to a grant', () => {
    const raw = overTheWire({ v: 1, id: 3, ok: true, result: { grants: [] } });
    expect(parseOkReply(raw)).toEqual({ id: 3, result: { grants: [] } });
  });
});

describe('parseGrantsResult', () => {
  it('accepts only the acquire and release results their schemas accept, parsed to the same value', () => {
    fc.assert(
      fc.property(fc.constantFrom('acquire', 'release', 'watchdog', 'inquire') as fc.Arbitrary<keyof typeof AGENT_METHODS>, fc.oneof({ arbitrary: result, weight: 9 }, fc.jsonValue()), (method, value) => {
        const raw = overTheWire(value);
        const fast = parseGrantsResult(method, raw);
        if (fast === undefined) return;
        const parsed = AGENT_METHODS[method].result.safeParse(raw);
        expect(parsed.success).toBe(true);
        expect(fast).toEqual(parsed.data);
      }),
      { numRuns: 20_000 },
    );
  });

  it('takes the agent’s results of a grant cycle', () => {
    const grants = [{ lockspace: 'images', resource: 'disk-1', mode: 'exclusive', token: 9, lockPath: '/l/x', since: '2026-11-21T19:00:00.000Z' }];
    expect(parseGrantsResult('acquire', overTheWire({ grants }))).toEqual({ grants });
    expect(parseGrantsResult('release', overTheWire({ released: grants }))).toEqual({ released: grants });
  });
});
