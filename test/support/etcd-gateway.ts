import { httpJson, type ClientTls } from './http-json.js';

// etcd 3.4 serves its gRPC API as JSON on the client URL; keys and values travel base64-encoded
// and 64-bit integers as decimal strings.

export interface EtcdStatus {
  /** This member's id, as a decimal string. */
  memberId: string;
  /** The id of the member this one believes leads, or "0" when it knows of none. */
  leaderId: string;
  raftTerm: bigint;
  version: string;
}

interface GatewayHeader {
  member_id?: string;
  revision?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** @default 2000 */
  timeoutMs?: number;
  /** For an `https:` client URL: the CA to trust and the client certificate to present. */
  tls?: ClientTls;
}

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const unb64 = (text: string): string => Buffer.from(text, 'base64').toString('utf8');

async function call<T>(clientUrl: string, path: string, body: unknown, options: CallOptions): Promise<T> {
  const response = await httpJson<T & { error?: string; message?: string }>(`${clientUrl}${path}`, {
    method: 'POST',
    body,
    ...options,
  });
  if (response.status !== 200) {
    const reason = response.body?.message ?? response.body?.error ?? JSON.stringify(response.body);
    throw new Error(`etcd ${clientUrl}${path} answered ${response.status}: ${reason}`);
  }
  return response.body;
}

/** Puts `key` = `value`; resolves with the new revision. */
export async function etcdPut(clientUrl: string, key: string, value: string, options: CallOptions = {}): Promise<bigint> {
  const reply = await call<{ header?: GatewayHeader }>(clientUrl, '/v3/kv/put', { key: b64(key), value: b64(value) }, options);
  return BigInt(reply.header?.revision ?? '0');
}

/** The value of `key` (a linearizable read), or undefined when it does not exist. */
export async function etcdGet(clientUrl: string, key: string, options: CallOptions = {}): Promise<string | undefined> {
  const reply = await call<{ kvs?: { value?: string }[] }>(clientUrl, '/v3/kv/range', { key: b64(key) }, options);
  const kv = reply.kvs?.[0];
  return kv === undefined ? undefined : unb64(kv.value ?? '');
}

/** The member's own view of the cluster: who it is and whom it follows. */
export async function etcdStatus(clientUrl: string, options: CallOptions = {}): Promise<EtcdStatus> {
  const reply = await call<{
    header?: GatewayHeader;
    leader?: string;
    raftTerm?: string;
    raft_term?: string;
    version?: string;
  }>(clientUrl, '/v3/maintenance/status', {}, options);
  const memberId = reply.header?.member_id;
  if (memberId === undefined) throw new Error(`etcd ${clientUrl} status has no header.member_id`);
  return {
    memberId,
    leaderId: reply.leader ?? '0',
    raftTerm: BigInt(reply.raftTerm ?? reply.raft_term ?? '0'),
    version: reply.version ?? '',
  };
}

/** Resolves when the member reports itself healthy (it has a leader and serves reads). */
export async function etcdHealth(clientUrl: string, options: CallOptions = {}): Promise<void> {
  const response = await httpJson<{ health?: string; reason?: string }>(`${clientUrl}/health`, options);
  if (response.status !== 200 || response.body?.health !== 'true') {
    throw new Error(`etcd ${clientUrl}/health: ${response.status} ${JSON.stringify(response.body)}`);
  }
}
