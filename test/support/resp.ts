import type { FrameParser } from './tcp-client.js';

/** An error reply (`-ERR ...`) from Redis, returned as a value rather than thrown by the parser. */
export class RespError extends Error {
  override readonly name = 'RespError';
}

export type RespValue = string | number | null | RespError | RespValue[];

/** Encodes a command as a RESP array of bulk strings, as every Redis client sends it. */
export function encodeCommand(...args: readonly (string | number)[]): Buffer {
  const parts = [`*${args.length}\r\n`];
  for (const arg of args) {
    const text = String(arg);
    parts.push(`$${Buffer.byteLength(text)}\r\n${text}\r\n`);
  }
  return Buffer.from(parts.join(''));
}

function parseAt(buffer: Buffer, offset: number): { value: RespValue; end: number } | undefined {
  const lineEnd = buffer.indexOf('\r\n', offset);
  if (lineEnd < 0) return undefined;
  const type = String.fromCharCode(buffer[offset] ?? 0);
  const line = buffer.subarray(offset + 1, lineEnd).toString('utf8');
  const next = lineEnd + 2;
  switch (type) {
    case '+':
      return { value: line, end: next };
    case '-':
      return { value: new RespError(line), end: next };
    case ':':
      return { value: Number(line), end: next };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, end: next };
      if (buffer.length < next + length + 2) return undefined;
      return { value: buffer.subarray(next, next + length).toString('utf8'), end: next + length + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items: RespValue[] = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parseAt(buffer, at);
        if (item === undefined) return undefined;
        items.push(item.value);
        at = item.end;
      }
      return { value: items, end: at };
    }
    default:
      throw new Error(`not a RESP reply: ${JSON.stringify(buffer.subarray(offset, lineEnd).toString('utf8'))}`);
  }
}

/** Parses one RESP2 reply for {@link TcpClient.read}. */
export const parseReply: FrameParser<RespValue> = (buffer) => {
  if (buffer.length === 0) return undefined;
  const reply = parseAt(buffer, 0);
  return reply === undefined ? undefined : { value: reply.value, length: reply.end };
};
