/** One server-sent event: its type (`message` when the server names none) and its data lines joined. */
export interface SseEvent {
  event: string;
  data: string;
}

/**
 * The events of a `text/event-stream` body, as the WHATWG rules read them: events end at a blank
 * line, `data:` lines are joined with newlines, lines starting with `:` are comments, and CRLF,
 * CR and LF all end a line. Stopping early (a `return` from `for await`) cancels the body, which
 * closes the connection.
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = '';
  let data: string[] = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      // A CR that ends the stream ends its line too: it can no longer be half of a CRLF.
      buffer += done ? (buffer.endsWith('\r') ? '\n' : '') : value;
      // A trailing CR may be the first half of a CRLF split across chunks: keep it for the next one.
      let end: number;
      while ((end = buffer.search(/\r\n|\r(?!$)|\n/)) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(buffer.startsWith('\r\n', end) ? end + 2 : end + 1);
        if (line === '') {
          if (data.length > 0) yield { event: event === '' ? 'message' : event, data: data.join('\n') };
          event = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event = text;
        else if (field === 'data') data.push(text);
      }
      // An event the stream cut off before its blank line is dropped, as the standard says.
      if (done) return;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}
