import { readFileSync, statSync } from 'node:fs';
import { ConstantBackoff, handleWhen, noop, retry } from 'cockatiel';
import {
  EtcdAuthenticationFailedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  Etcd3,
  GRPCUnauthenticatedError,
  type IRangeResponse,
  type ITxnRequest,
  type ITxnResponse,
  type IDeleteRangeResponse,
  type IPutResponse,
  type ILeaseGrantResponse,
  type ILeaseTimeToLiveResponse,
  type IDuplexStream,
  type ILeaseKeepAliveRequest,
  type ILeaseKeepAliveResponse,
  type IKeyValue,
} from 'etcd3';
import { BatonError, leaseTiming, readSecretFile, rpcDeadline } from '@baton/core';
import { keyPrefix, type EtcdConfig } from './config.js';
import { KeyLayout, prefixEnd } from './keys.js';

/** A password file others can read is refused: the credentials could write every lease of the cluster. */
function readPasswordFile(path: string): string {
  return readSecretFile('etcd.auth.passwordFile', path, { statSync, readFileSync });
}

/** The request never reached a member: the connection was refused or never established. */
function notSent(err: Error): boolean {
  return /ECONNREFUSED|No connection established|connect EHOSTUNREACH/.test(err.message);
}

/** An etcd failure in the catalogue's terms: permission → DENIED, a vanished lease → LEASE_LOST, the rest → UNAVAILABLE. */
export function etcdError(err: unknown, what: string): BatonError {
  if (err instanceof BatonError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof EtcdPermissionDeniedError || err instanceof EtcdAuthenticationFailedError || err instanceof GRPCUnauthenticatedError) {
    return new BatonError('DENIED', `etcd refused ${what}: ${message}`, { cause: err });
  }
  // A TLS alert reaches the client as a failed connection; it is a refusal, not an outage, and no
  // retry will change it.
  if (/bad certificate|certificate unknown|unknown ca|certificate verify failed|self[- ]signed certificate/i.test(message)) {
    return new BatonError('DENIED', `etcd refused ${what} at the TLS handshake: ${message}`, { cause: err });
  }
  if (err instanceof EtcdLeaseInvalidError) return new BatonError('LEASE_LOST', `etcd no longer knows the session (${what}): ${message}`, { cause: err });
  return new BatonError('UNAVAILABLE', `etcd did not complete ${what}: ${message}`, { details: { ambiguous: !(err instanceof Error && notSent(err)) }, cause: err });
}

export interface RangeOptions {
  prefix?: boolean;
  countOnly?: boolean;
}

/**
 * The one place the etcd3 package is used. Only its raw KV, lease and watch clients: the recipes
 * (Lock, Election) have no fencing token and report loss late. Retries are Baton's own decision
 * (a retried transaction may have committed already): the package's circuit breaker is off, its
 * retry covers only requests that never left, and every call carries a deadline.
 */
export class EtcdConnection implements AsyncDisposable {
  readonly keys: KeyLayout;
  readonly requestTimeoutMs: number;
  private readonly client: Etcd3;
  private closed = false;

  constructor(readonly config: EtcdConfig) {
    this.keys = new KeyLayout(keyPrefix(config));
    this.requestTimeoutMs = config.requestTimeoutMs || leaseTiming(config.ttlSeconds).requestTimeoutMs;
    const tls = config.tls;
    this.client = new Etcd3({
      hosts: config.endpoints,
      dialTimeout: this.requestTimeoutMs,
      // The one retry that is always safe: a request that never left (the member refused the
      // connection) goes to another member at once. Anything that may have reached etcd is not
      // retried here; its outcome is read back.
      faultHandling: {
        host: () => noop,
        global: retry(handleWhen(notSent), { maxAttempts: config.endpoints.length, backoff: new ConstantBackoff(0) }),
      },
      ...(tls === undefined
        ? {}
        : {
            credentials: {
              rootCertificate: readFileSync(tls.caFile),
              ...(tls.keyFile === undefined ? {} : { privateKey: readFileSync(tls.keyFile), certChain: readFileSync(tls.certFile!) }),
            },
          }),
      ...(config.auth === undefined ? {} : { auth: { username: config.auth.username, password: readPasswordFile(config.auth.passwordFile) } }),
    });
  }

  private options(timeoutMs?: number): { deadline: number } {
    return { deadline: rpcDeadline(timeoutMs ?? this.requestTimeoutMs) };
  }

  /** Every call: a deadline, and a failure in the catalogue's terms naming what was attempted. */
  private async call<T>(what: string, rpc: (options: { deadline: number }) => Promise<T>, timeoutMs?: number): Promise<T> {
    try {
      return await rpc(this.options(timeoutMs));
    } catch (err) {
      throw etcdError(err, what);
    }
  }

  txn(req: ITxnRequest, what: string, timeoutMs?: number): Promise<ITxnResponse> {
    return this.call(what, (o) => this.client.kv.txn(req, o), timeoutMs);
  }

  range(key: string, opts: RangeOptions = {}, timeoutMs?: number): Promise<IRangeResponse> {
    const req = { key: Buffer.from(key), ...(opts.prefix ? { range_end: prefixEnd(key) } : {}), ...(opts.countOnly ? { count_only: true } : {}) };
    return this.call(`a read of ${key}`, (o) => this.client.kv.range(req, o), timeoutMs);
  }

  put(key: string, value: string, lease?: string): Promise<IPutResponse> {
    const req = { key: Buffer.from(key), value: Buffer.from(value), ...(lease === undefined ? {} : { lease }) };
    return this.call(`a write of ${key}`, (o) => this.client.kv.put(req, o));
  }

  deleteKey(key: string): Promise<IDeleteRangeResponse> {
    return this.call(`a delete of ${key}`, (o) => this.client.kv.deleteRange({ key: Buffer.from(key) }, o));
  }

  leaseGrant(ttlSeconds: number): Promise<ILeaseGrantResponse> {
    return this.call('a session grant', (o) => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds }, o));
  }

  leaseTimeToLive(id: string): Promise<ILeaseTimeToLiveResponse> {
    return this.call(`a lookup of session ${id}`, (o) => this.client.leaseClient.leaseTimeToLive({ ID: id }, o));
  }

  async leaseRevoke(id: string): Promise<void> {
    await this.call(`the revocation of session ${id}`, (o) => this.client.leaseClient.leaseRevoke({ ID: id }, o));
  }

  /**
   * Watch a key (or a prefix) from a revision on, so nothing between a read and the watch is
   * missed. The etcd3 watch manager reconnects the stream by itself and resumes from the last
   * revision seen.
   */
  async watch(key: string, opts: { prefix?: boolean; fromRevision: string }, on: { put?(kv: IKeyValue): void; delete?(kv: IKeyValue): void }): Promise<{ cancel(): Promise<void> }> {
    const builder = opts.prefix ? this.client.watch().prefix(key) : this.client.watch().key(key);
    try {
      const watcher = await builder.startRevision(opts.fromRevision).create();
      if (on.put) watcher.on('put', (kv) => on.put!(kv));
      if (on.delete) watcher.on('delete', (kv) => on.delete!(kv));
      return watcher;
    } catch (err) {
      throw etcdError(err, `a watch of ${key}`);
    }
  }

  /** A keepalive stream; the session sends on it and matches answers in order. */
  async keepaliveStream(): Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> {
    try {
      return await this.client.leaseClient.leaseKeepAlive();
    } catch (err) {
      throw etcdError(err, 'opening a keepalive stream');
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}
