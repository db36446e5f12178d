import { describe, expect, it } from 'vitest';
import { waitFor, WaitTimeoutError } from './wait-for.js';

describe('waitFor', () => {
  it('returns the first successful probe value', async () => {
    let calls = 0;
    const value = await waitFor(
      () => {
        calls++;
        if (calls < 3) throw new Error('not yet');
        return calls === 3 ? false : `ready after ${calls}`;
      },
      { what: 'the counter', deadlineMs: 2_000, intervalMs: 1 },
    );
    expect(value).toBe('ready after 4');
  });

  it('times out naming what it awaited and the last probe error', async () => {
    const started = performance.now();
    const error: unknown = await waitFor(
      () => {
        throw new Error('connection refused, attempt');
      },
      { what: 'the flux capacitor', deadlineMs: 150 },
    ).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WaitTimeoutError);
    expect(String(error)).toMatch(/waiting for the flux capacitor .*last probe error: connection refused, attempt/);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it('bounds a probe that never answers', async () => {
    const error: unknown = await waitFor(() => new Promise<never>(() => undefined), {
      what: 'a hung server',
      deadlineMs: 400,
      attemptTimeoutMs: 50,
    }).catch((e: unknown) => e);
    expect(String(error)).toMatch(/probe gave no answer within 50 ms/);
  });

  it('gives up when the caller aborts, saying why', async () => {
    const controller = new AbortController();
    const waiting = waitFor(() => false, { what: 'nothing', signal: controller.signal });
    controller.abort(new Error('the server died'));
    await expect(waiting).rejects.toThrow(/gave up waiting for nothing: the server died/);
  });
});
