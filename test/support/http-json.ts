import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { assertLoopback } from './ports.js';

/** What a client trusts and presents on an `https:` URL (PEM contents, not paths). */
export interface ClientTls {
  ca: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

export interface HttpJsonOptions {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
  body?: unknown;
  signal?: AbortSignal;
  /** @default 2000 */
  timeoutMs?: number;
  /** For `https:` URLs: the CA to trust and the client certificate to present. */
  tls?: ClientTls;
}

export interface HttpJsonResponse<T> {
  status: number;
  body: T;
}

/**
 * One HTTP request to a loopback server, answered as JSON. A fresh connection each time (no
 * agent, so no pooled socket to a killed server and no proxy taken from the environment).
 */
export function httpJson<T = unknown>(url: string, options: HttpJsonOptions = {}): Promise<HttpJsonResponse<T>> {
  const target = new URL(url);
  assertLoopback(target.hostname);
  const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
  const signal = AbortSignal.any([
    AbortSignal.timeout(options.timeoutMs ?? 2_000),
    ...(options.signal === undefined ? [] : [options.signal]),
  ]);
  const https = target.protocol === 'https:';
  if (https && options.tls === undefined) return Promise.reject(new Error(`${url}: an https URL needs the tls option (the CA to trust)`));
  const send = https ? httpsRequest : request;
  return new Promise((resolve, reject) => {
    const req = send(
      target,
      {
        method: options.method ?? (payload === undefined ? 'GET' : 'POST'),
        agent: false,
        signal,
        headers: payload === undefined ? {} : { 'content-type': 'application/json' },
        ...(https ? { ca: options.tls!.ca, cert: options.tls!.cert, key: options.tls!.key } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          try {
            resolve({ status: res.statusCode ?? 0, body: (text === '' ? undefined : JSON.parse(text)) as T });
          } catch (error) {
            reject(new Error(`${url} answered ${res.statusCode} with non-JSON: ${text.slice(0, 200)}`, { cause: error }));
          }
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
