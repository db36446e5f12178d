import { describe, expect, it } from 'vitest';
import { LineReader, type LineEvent } from '../src/api/line-reader.js';

function feed(reader: LineReader, ...chunks: string[]): LineEvent[] {
  return chunks.flatMap((c) => [...reader.push(Buffer.from(c))]);
}

describe('LineReader', () => {
  it('splits lines across and within chunks, and skips blank lines', () => {
    const r = new LineReader(100);
    expect(feed(r, '{"a":1}\n{"b"', ':2}\n\n', '{"c":3}')).toEqual([
      { kind: 'line', line: '{"a":1}' },
      { kind: 'line', line: '{"b":2}' },
    ]);
    expect(r.pending().toString()).toBe('{"c":3}');
  });

  it('reports an oversized line once, discards it to its newline, and carries on', () => {
    const r = new LineReader(10);
    const events = feed(r, 'x'.repeat(8), 'x'.repeat(8), 'x'.repeat(8), '\nok\n');
    expect(events).toEqual([
      { kind: 'too-long', bytes: 16 },
      { kind: 'line', line: 'ok' },
    ]);
  });

  it('keeps multi-byte characters split across chunks whole', () => {
    const r = new LineReader(100);
    const bytes = Buffer.from('"é"\n');
    expect([...r.push(bytes.subarray(0, 2)), ...r.push(bytes.subarray(2))]).toEqual([{ kind: 'line', line: '"é"' }]);
  });
});
