/**
 * A retry pause that doubles after each use up to a ceiling, and starts over after a success. Pure:
 * the caller waits (with its own AbortSignal) for what `next()` returns.
 */
export class Backoff {
  private current: number;

  constructor(
    private readonly firstMs: number,
    private readonly maxMs: number,
  ) {
    this.current = firstMs;
  }

  /** The pause the next retry will wait. */
  get ms(): number {
    return this.current;
  }

  /** The pause to wait now; the one after it doubles (up to the ceiling). */
  next(): number {
    const ms = this.current;
    this.current = Math.min(ms * 2, this.maxMs);
    return ms;
  }

  reset(): void {
    this.current = this.firstMs;
  }
}
