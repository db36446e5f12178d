import { describe, expect, it } from 'vitest';
import { readSse, type SseEvent } from '../src/sse.js';

/** A body delivered in exactly these chunks, as a network may cut it. */
function body(...chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(encoder.encode(c));
      controller.close();
    },
  });
}

async function events(...chunks: string[]): Promise<SseEvent[]> {
  const out: SseEvent[] = [];
  for await (const e of readSse(body(...chunks))) out.push(e);
  return out;
}

describe('readSse', () => {
  it('reads events split anywhere across chunks, with LF, CRLF or CR line ends', async () => {
    expect(await events('event: progress\ndata: {"a"', ':1}\n\nevent: end\r', '\ndata: {}\r\n\r', '\n')).toEqual([
      { event: 'progress', data: '{"a":1}' },
      { event: 'end', data: '{}' },
    ]);
    expect(await events('data: x\r\rdata: y\r\r')).toEqual([
      { event: 'message', data: 'x' },
      { event: 'message', data: 'y' },
    ]);
  });

  it('joins data lines, skips comments and data-less events, and drops an event the stream cut off', async () => {
    expect(await events(': keepalive\n\nevent: progress\ndata:one\ndata: two\nid: 7\n\nevent: end\n\nevent: end\ndata: {"cut":')).toEqual([
      { event: 'progress', data: 'one\ntwo' },
    ]);
  });

  it('stops reading, and cancels the body, when the consumer stops', async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('data: 1\n\ndata: 2\n\n'));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const e of readSse(stream)) {
      expect(e.data).toBe('1');
      break;
    }
    expect(cancelled).toBe(true);
  });
});
