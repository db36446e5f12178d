import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { checkServerIdentity, type ConnectionOptions as NodeTlsOptions } from 'node:tls';
import { AuthorizationError, connect, PermissionViolationError, type ConnectionOptions, type NatsConnection, type Subscription, type TlsOptions } from '@nats-io/transport-node';
import { jetstream, JetStreamApiCodes, JetStreamApiError, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { asBatonError, BatonError, parseOrRefuse, PROTOCOL_VERSION, readSecretFile, ReplyEnvelope, type ErrorBody, type ErrorCode } from '@baton/core';
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
  private jsm: Promise<JetStreamManager> | undefined;
  private closed = false;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly config: BusConfig,
    private readonly onError: (err: BatonError) => void,
  ) {
    this.subjects = new Subjects(config);
    void this.watchRefusals();
  }

  /**
   * Connect as `name` (nats-server's monitoring shows it), with the configured user and TLS. A
   * refusal (credentials, client certificate, a server certificate the CA does not vouch for) is
   * DENIED: no retry changes it, and an agent that gets it exits 5. An unreachable server is
   * UNAVAILABLE. What NATS refuses later, asynchronously (a publish or subscription the user's
   * permissions do not allow, the credentials on a reconnect), goes to `onError`, by default a
   * process warning on stderr.
   */
  static async connect(config: BusConfig, name: string, opts: { onError?: (err: BatonError) => void } = {}): Promise<Bus> {
    // Before dialling: a password file others can read is refused (INVALID_CONFIG) even if NATS is down.
    const options = connectionOptions(config);
    let nc: NatsConnection;
    try {
      // Reconnect for ever: a NATS restart is an outage to ride out, not a reason to exit.
      nc = await connect({ ...options, name, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    } catch (err) {
      throw natsRefusal(err, config) ?? new BatonError('UNAVAILABLE', `cannot reach NATS at ${config.servers.join(', ')}: ${(err as Error).message}`, { cause: err });
    }
    return new Bus(nc, config, opts.onError ?? warn);
  }

  /** NATS answers a refused publish or subscription with `-ERR` on the connection, not to the call: nats.js reports it as a status. */
  private async watchRefusals(): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === 'error') this.onError(natsRefusal(status.error, this.config) ?? new BatonError('UNAVAILABLE', `NATS reported an error: ${status.error.message}`, { cause: status.error }));
    }
  }

  /** Send a command and wait for its reply; no reply in time is UNAVAILABLE (it may still run: commands are idempotent). */
  async request(subject: string, params: unknown, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    let msg;
    try {
      msg = await this.nc.request(subject, JSON.stringify({ v: PROTOCOL_VERSION, params }), { timeout: opts.timeoutMs ?? this.config.requestTimeoutMs });
    } catch (err) {
      // A request the user may not send (or whose reply it may not receive) is refused, not lost.
      throw natsRefusal(err, this.config) ?? new BatonError('UNAVAILABLE', `no answer to ${subject}: ${(err as Error).message}`, { details: { subject }, cause: err });
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
   * handler threw. Resolves once NATS has taken the subscription; a subscription the user's
   * permissions do not allow rejects with DENIED (and goes to `onError`), rather than serving
   * nothing in silence. A caller that does not wait sees it through `onError` only.
   */
  serve(subject: string, handler: CommandHandler, onRefused?: (err: BatonError) => void): Promise<void> {
    let denied: unknown;
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) {
          // nats.js has closed the subscription: nothing will arrive on it.
          denied = err;
          this.subs.delete(sub);
          return;
        }
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
    // NATS handles a connection's commands in order: a refused SUB is answered (-ERR) before the
    // PONG of a PING sent after it.
    const taken = this.nc.flush().then(
      () => {
        if (denied !== undefined) throw natsRefusal(denied, this.config) ?? asBatonError(denied, 'UNAVAILABLE');
      },
      (err: unknown) => {
        throw new BatonError('UNAVAILABLE', `NATS did not confirm the subscription to ${subject}: ${(err as Error).message}`, { details: { subject }, cause: err });
      },
    );
    taken.catch(() => undefined);
    return taken;
  }

  publish(subject: string, event: unknown): void {
    this.nc.publish(subject, JSON.stringify(event));
  }

  /**
   * JetStream's manager, made once: making one asks the server for the account's JetStream (a
   * round trip). A failure is not kept, so JetStream enabled later is found.
   */
  private manager(): Promise<JetStreamManager> {
    this.jsm ??= jetstreamManager(this.nc).catch((err: unknown) => {
      this.jsm = undefined;
      throw err;
    });
    return this.jsm;
  }

  /**
   * A JetStream stream over the events, so history outlives a coordinator and the records etcd
   * keeps (idempotent: a stream that exists is left as it is). `maxAgeMs` 0 keeps events for ever.
   */
  async ensureHistory(stream: string, opts: { maxAgeMs?: number } = {}): Promise<void> {
    try {
      const jsm = await this.manager();
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
      const jsm = await this.manager();
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

/** Where a refusal goes when the caller gave no `onError`: stderr, as a process warning. */
function warn(err: BatonError): void {
  process.emitWarning(err.message, { code: `BATON_${err.code}` });
}

/** nats.js's options for the configured servers, user and TLS; INVALID_CONFIG when a file they name cannot be used. */
function connectionOptions(config: BusConfig): ConnectionOptions {
  const { auth, tls } = config;
  // nats.js would report a missing file as a failed connection, retried as an outage.
  for (const [key, path] of Object.entries(tls ?? {})) {
    if (path === undefined) continue;
    try {
      accessSync(path, constants.R_OK);
    } catch (err) {
      throw new BatonError('INVALID_CONFIG', `nats.tls.${key} ${path} cannot be read (${String((err as NodeJS.ErrnoException).code)})`, { details: { field: `nats.tls.${key}` }, cause: err });
    }
  }
  return {
    servers: config.servers,
    ...(auth === undefined ? {} : { user: auth.username, pass: readSecretFile('nats.auth.passwordFile', auth.passwordFile, { statSync, readFileSync }) }),
    // nats.js reads the files at every (re)connect, so renewed certificates are picked up.
    ...(tls === undefined ? {} : { tls: { caFile: tls.caFile, ...(tls.certFile === undefined || tls.keyFile === undefined ? {} : { certFile: tls.certFile, keyFile: tls.keyFile }), ...nodeTls(config.servers) } }),
  };
}

/**
 * Options nats.js hands on to Node's `tls.connect` (it spreads its `tls` option into them; its
 * TlsOptions type does not list them).
 */
function nodeTls(servers: readonly string[]): TlsOptions & Pick<NodeTlsOptions, 'maxVersion' | 'checkServerIdentity'> {
  const hosts = [...new Set(servers.map((s) => new URL(s).hostname.replace(/^\[(.*)\]$/, '$1')))];
  return {
    // Under TLS 1.3 a server refuses a client's certificate after the handshake, and nats.js 3.4
    // loses that alert: the connect just waits out its 20 s timeout and the refusal reads as an
    // outage. Under TLS 1.2 the refusal is part of the handshake and is reported at once, as what
    // it is (DENIED). nats-server's own minimum is 1.2.
    maxVersion: 'TLSv1.2',
    // nats.js does not name an IP address to Node's TLS (an IP may not be sent as SNI), so Node
    // would check the certificate against "localhost" (nats.js issue 303). A certificate must name
    // the server dialled when nats.js says which, and else one of the configured servers.
    checkServerIdentity: (hostname, cert) => {
      let refused: Error | undefined;
      for (const host of hosts.includes(hostname) ? [hostname] : hosts) {
        const err = checkServerIdentity(host, cert);
        if (err === undefined) return undefined;
        refused ??= err;
      }
      return refused;
    },
  };
}

/** The user a refusal concerns, for its message. */
function who(config: BusConfig): string {
  return config.auth === undefined ? 'a client without credentials' : `user ${config.auth.username}`;
}

/**
 * A refusal by NATS as DENIED: credentials (Authorization Violation), permissions (Permissions
 * Violation), and TLS either way (the server refused this client's certificate, or the server's
 * certificate is not one the configured CA vouches for for that address). No retry changes any
 * of them. Undefined for anything else: an outage.
 */
function natsRefusal(err: unknown, config: BusConfig): BatonError | undefined {
  const at = `NATS at ${config.servers.join(', ')}`;
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof PermissionViolationError) {
      return new BatonError('DENIED', `NATS refused ${who(config)}: ${e.message}`, { details: { subject: e.subject, operation: e.operation }, cause: err });
    }
    if (e instanceof AuthorizationError) return new BatonError('DENIED', `${at} refused ${who(config)}: ${e.message}`, { cause: err });
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^ERR_SSL_.*ALERT/.test(code)) {
      const reason = (e as { reason?: unknown }).reason ?? e.message;
      const mine = config.tls?.certFile ?? 'none';
      return new BatonError('DENIED', `${at} refused the TLS handshake: ${String(reason)} (client certificate: ${mine})`, { details: { tls: code }, cause: err });
    }
    // OpenSSL's verification codes (UNABLE_TO_VERIFY_LEAF_SIGNATURE, CERT_HAS_EXPIRED, ...) and
    // Node's for a certificate that names another host.
    if (typeof code === 'string' && (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || /^[A-Z_]*(CERT|SIGNATURE|ISSUER|_CA)[A-Z_]*$/.test(code))) {
      return new BatonError('DENIED', `${at} presented a certificate this process does not trust (nats.tls.caFile): ${e.message}`, { details: { tls: code }, cause: err });
    }
    if (/does not support 'tls'|tls is not available/i.test(e.message)) {
      return new BatonError('DENIED', `${at} does not offer TLS, which nats.tls requires`, { cause: err });
    }
  }
  return undefined;
}
