import {
  AGENT_METHODS,
  BatonError,
  describeIssues,
  parseOrRefuse,
  isAgentMethod,
  PROTOCOL_VERSION,
  RequestEnvelope,
  toErrorBody,
  type AgentMethod,
  type AgentParsedParams,
  type AgentResult,
  type ReplyEnvelope,
  type RequestId,
} from '@baton/core';
import type { PeerCred } from '../sys/index.js';
import { parseHotRequest } from './hot-request.js';

/** What the agent knows about the connection a request arrived on. */
export interface ConnectionContext {
  readonly id: number;
  readonly peer: PeerCred | undefined;
  ownerUuid: string | undefined;
  restricted: boolean;
}

/** A handler answers at once, or (when it must ask the cluster) later; a connection waits for it in order. */
export type Handlers = {
  [M in AgentMethod]: (ctx: ConnectionContext, params: AgentParsedParams<M>) => AgentResult<M> | Promise<AgentResult<M>>;
};

function reply(id: RequestId | null, result: unknown): ReplyEnvelope {
  return { v: PROTOCOL_VERSION, id, ok: true, result };
}

export function errorReply(id: RequestId | null, err: unknown): ReplyEnvelope {
  return { v: PROTOCOL_VERSION, id, ok: false, error: toErrorBody(err) };
}

/** One request line in, one reply out. Nothing the line holds can throw past this function. */
export function dispatch(handlers: Handlers, ctx: ConnectionContext, line: string): ReplyEnvelope | Promise<ReplyEnvelope> {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch (err) {
    return errorReply(null, new BatonError('INVALID_REQUEST', `not JSON: ${(err as Error).message}`));
  }
  const hot = parseHotRequest(raw);
  if (hot) return invoke(handlers, ctx, hot.id, hot.method, hot.params);
  const env = RequestEnvelope.safeParse(raw);
  const id = env.success ? env.data.id : null;
  try {
    if (!env.success) throw new BatonError('INVALID_REQUEST', `bad envelope: ${describeIssues(env.error)}`);
    if (env.data.v !== PROTOCOL_VERSION) {
      throw new BatonError('UNSUPPORTED_VERSION', `protocol version ${env.data.v} is not supported`, { details: { supported: [PROTOCOL_VERSION] } });
    }
    const method = env.data.method;
    if (!isAgentMethod(method)) throw new BatonError('UNKNOWN_METHOD', `unknown method "${method}"`, { details: { methods: Object.keys(AGENT_METHODS) } });
    return invoke(handlers, ctx, env.data.id, method, parseOrRefuse(AGENT_METHODS[method].params, env.data.params, method));
  } catch (err) {
    return errorReply(id, err);
  }
}

function invoke(handlers: Handlers, ctx: ConnectionContext, id: RequestId, method: AgentMethod, params: unknown): ReplyEnvelope | Promise<ReplyEnvelope> {
  try {
    const handler = handlers[method] as (c: ConnectionContext, p: unknown) => unknown;
    const result = handler(ctx, params);
    return result instanceof Promise ? result.then((r) => reply(id, r), (err: unknown) => errorReply(id, err)) : reply(id, result);
  } catch (err) {
    return errorReply(id, err);
  }
}
