import { execFile } from 'node:child_process';
import { findBinary } from './binaries.js';
import { assertLoopback } from './ports.js';

export interface EtcdctlOptions {
  /** `--cacert`, and `--cert`/`--key` when a client certificate is to be presented. */
  tls?: { caFile: string; certFile?: string; keyFile?: string };
  /** `--user name:password` (etcd auth). */
  user?: { name: string; password: string };
  /** @default 10000 */
  timeoutMs?: number;
}

/** etcdctl failed: its exit status and what it printed. */
export class EtcdctlError extends Error {
  override readonly name = 'EtcdctlError';
  constructor(
    readonly args: readonly string[],
    readonly status: number | null,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`etcdctl ${args.join(' ')} exited ${status}: ${stderr.trim() || stdout.trim()}`);
  }
}

/**
 * `etcdctl` (API v3) against one loopback endpoint, as an operator types it; resolves with its
 * stdout, rejects with {@link EtcdctlError}. ETCDCTL_* variables of the runner are left out.
 */
export function etcdctl(endpoint: string, args: readonly string[], opts: EtcdctlOptions = {}): Promise<string> {
  assertLoopback(new URL(endpoint).hostname);
  const binary = findBinary('etcdctl');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ETCDCTL_')));
  const full = [
    `--endpoints=${endpoint}`,
    ...(opts.tls === undefined ? [] : [`--cacert=${opts.tls.caFile}`]),
    ...(opts.tls?.certFile === undefined ? [] : [`--cert=${opts.tls.certFile}`, `--key=${opts.tls.keyFile}`]),
    ...(opts.user === undefined ? [] : [`--user=${opts.user.name}:${opts.user.password}`]),
    ...args,
  ];
  return new Promise((resolve, reject) => {
    execFile(binary, full, { env: { ...env, ETCDCTL_API: '3' }, timeout: opts.timeoutMs ?? 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new EtcdctlError(args, typeof err.code === 'number' ? err.code : null, stdout, stderr));
      else resolve(stdout);
    });
  });
}
