/**
 * Splits a byte stream into lines, with a size limit. An oversized line is reported once and
 * discarded up to its newline, so the connection stays usable for the requests after it.
 */
export type LineEvent = { kind: 'line'; line: string } | { kind: 'too-long'; bytes: number };

export class LineReader {
  private parts: Buffer[] = [];
  private size = 0;
  private discarding: boolean;

  /** `discarding`: in the middle of an oversized line already reported (a re-exec carries it). */
  constructor(
    private readonly maxBytes: number,
    opts: { discarding?: boolean } = {},
  ) {
    this.discarding = opts.discarding ?? false;
  }

  /** Bytes received but not yet a whole line (carried across a re-exec). */
  pending(): Buffer {
    return Buffer.concat(this.parts);
  }

  /** Whether the bytes up to the next newline are the rest of an oversized line (carried across a re-exec). */
  get isDiscarding(): boolean {
    return this.discarding;
  }

  *push(chunk: Buffer): Generator<LineEvent> {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!this.discarding) {
        this.size += end - start;
        if (this.size > this.maxBytes) {
          this.discarding = true;
          this.parts = [];
          yield { kind: 'too-long', bytes: this.size };
        } else {
          this.parts.push(chunk.subarray(start, end));
        }
      }
      if (nl === -1) break;
      if (!this.discarding) {
        // A line within one chunk (the usual request) is decoded in place, without a copy.
        const line = (this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts)).toString('utf8');
        if (line.trim() !== '') yield { kind: 'line', line };
      }
      this.parts = [];
      this.size = 0;
      this.discarding = false;
      start = nl + 1;
    }
  }
}
