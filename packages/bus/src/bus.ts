import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { jetstream, JetStreamApiCodes, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import { asBatonError, BatonError, parseOrRefuse, PROTOCOL_VERSION, ReplyEnvelope, type ErrorBody, type ErrorCode } from '@baton/core';
import { z } from 'zod';
import { Subjects, type BusConfig } from './config.js';

const CommandEnvelope = z.object({ v: z.number(), params: z.unknown() });

/** JetStream's answers that mean it holds nothing to read. */
const NOTHING_STORED: readonly number[] = [JetStreamApiCodes.NoMessageFound, JetStreamApiCodes.StreamNotFound, JetStreamApiCodes.JetStreamNotEnabledForAccount];

/** A handler answers a command's params with a result, or throws a BatonError (its code travels). */
export type CommandHandler = (params: unknown, subject: string) => unknown;

/**
 * The one place NATS is used. Commands are request/reply with the agent socket's envelope: a
 * versioned request `{v, params}` and a reply `{v, ok, result | error}` whose error carries a code
 * from the catalogue, so a refusal reads the same here as on the socket, over HTTP and in the CLI.
 */
export class Bus implements AsyncDisposable {
  readonly subjects: Subjects;
  private readonly subs = new Set<Subscription>();
  private closed = false;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly config: BusConfig,
  ) {
    this.subjects = new Subjects(config);
  }

  static async connect(config: BusConfig, name: string): Promise<Bus> {
    try {
      // Reconnect for ever: a NATS restart is an outage to ride out, not a reason to exit.
      const nc = await connect({ servers: config.servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
      return new Bus(nc, config);
    } catch (err) {
      throw new BatonError('UNAVAILABLE', `cannot reach NATS at ${config.servers.join(', ')}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Send a command and wait for its reply; no reply in time is UNAVAILABLE (it may still run: commands are idempotent). */
  async request(subject: string, params: unknown, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    let msg;
    try {
      msg = await this.nc.request(subject, JSON.stringify({ v: PROTOCOL_VERSION, params }), { timeout: opts.timeoutMs ?? this.config.requestTimeoutMs });
    } catch (err) {
      throw new BatonError('UNAVAILABLE', `no answer to ${subject}: ${(err as Error).message}`, { details: { subject }, cause: err });
    }
    // A reply that cannot be read is no refusal: the peer may have acted (UNAVAILABLE: send again).
    const reply = ReplyEnvelope.safeParse(safeJson(msg));
    if (!reply.success) throw new BatonError('UNAVAILABLE', `malformed reply on ${subject}`, { details: { subject } });
    if (!reply.data.ok) throw BatonError.fromBody(reply.data.error as ErrorBody);
    return reply.data.result;
  }

  /**
   * Answer commands on `subject` (wildcards allowed); every failure is a catalogue error reply.
   * `onRefused` learns of every refusal answered, whether the envelope was not understood or the
   * handler threw.
   */
  serve(subject: string, handler: CommandHandler, onRefused?: (err: BatonError) => void): void {
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const respond = (body: unknown): void => {
          msg.respond(JSON.stringify(body));
        };
        const refuse = (e: unknown, code: ErrorCode): void => {
          const refusal = asBatonError(e, code);
          onRefused?.(refusal);
          respond({ v: PROTOCOL_VERSION, id: null, ok: false, error: refusal.toBody() });
        };
        let params: unknown;
        try {
          const body = safeJson(msg);
          if (body === undefined) throw new BatonError('INVALID_REQUEST', `a command on ${msg.subject} is not JSON`);
          const env = parseOrRefuse(CommandEnvelope, body, `a command on ${msg.subject} has no envelope {v, params}`);
          if (env.v !== PROTOCOL_VERSION) throw new BatonError('UNSUPPORTED_VERSION', `protocol version ${env.v} is not supported`, { details: { supported: [PROTOCOL_VERSION] } });
          params = env.params;
        } catch (e) {
          refuse(e, 'INVALID_REQUEST');
          return;
        }
        Promise.resolve()
          .then(() => handler(params, msg.subject))
          .then(
            (result) => respond({ v: PROTOCOL_VERSION, id: null, ok: true, result }),
            (e: unknown) => refuse(e, 'INTERNAL'),
          )
          .catch(() => undefined);
      },
    });
    this.subs.add(sub);
  }

  publish(subject: string, event: unknown): void {
    this.nc.publish(subject, JSON.stringify(event));
  }

  /**
   * A JetStream stream over the events, so history outlives a coordinator and the records etcd
   * keeps (idempotent: a stream that exists is left as it is). `maxAgeMs` 0 keeps events for ever.
   */
  async ensureHistory(stream: string, opts: { maxAgeMs?: number } = {}): Promise<void> {
    try {
      const jsm = await jetstreamManager(this.nc);
      const exists = await jsm.streams.info(stream).then(
        () => true,
        (err: unknown) => {
          if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return false;
          throw err;
        },
      );
      if (!exists) await jsm.streams.add({ name: stream, subjects: [this.subjects.allEvents], max_age: nanos(opts.maxAgeMs ?? 0) });
    } catch (err) {
      throw new BatonError('UNAVAILABLE', `JetStream stream ${stream} is not available: ${(err as Error).message}`, { details: { stream }, cause: err });
    }
  }

  /**
   * Publish an event and wait for JetStream to store it. `msgId` makes a repeat within the
   * stream's duplicate window (two minutes by default) a no-op.
   */
  async record(subject: string, event: unknown, opts: { msgId?: string } = {}): Promise<void> {
    try {
      await jetstream(this.nc).publish(subject, JSON.stringify(event), opts.msgId === undefined ? undefined : { msgID: opts.msgId });
    } catch (err) {
      throw new BatonError('UNAVAILABLE', `event on ${subject} was not stored: ${(err as Error).message}`, { details: { subject }, cause: err });
    }
  }

  /**
   * The last event `stream` stored on `subject`; undefined when it holds none, or there is no
   * such stream, or no JetStream at all (nothing was ever stored).
   */
  async lastRecorded(stream: string, subject: string): Promise<unknown> {
    try {
      const jsm = await jetstreamManager(this.nc);
      const msg = await jsm.streams.getMessage(stream, { last_by_subj: subject });
      return msg === null ? undefined : msg.json();
    } catch (err) {
      // The package's JetStreamNotEnabled class is not exported; its name is set.
      if ((err as Error).name === 'JetStreamNotEnabled') return undefined;
      if (err instanceof JetStreamApiError && NOTHING_STORED.includes(err.code)) return undefined;
      throw new BatonError('UNAVAILABLE', `JetStream stream ${stream} could not be read: ${(err as Error).message}`, { details: { stream, subject }, cause: err });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.subs) s.unsubscribe();
    await this.nc.drain().catch(() => this.nc.close());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A message's JSON, or undefined when it is not JSON. */
function safeJson(msg: { json(): unknown }): unknown {
  try {
    return msg.json();
  } catch {
    return undefined;
  }
}

/** JetStream's durations are nanoseconds. */
function nanos(ms: number): number {
  return ms * 1_000_000;
}
