/**
 * The one error catalogue. The same codes travel on the agent's socket, on NATS, over HTTP and
 * out of the CLI; docs/errors.md documents each one and a test keeps the two in step.
 */
export const ERROR_CATALOGUE = {
  RESOURCE_BUSY: { http: 409, exit: 3, summary: 'The resource is locked by another owner, or in a mode that conflicts.' },
  STALE_TOKEN: { http: 409, exit: 3, summary: 'A token lower than the resource’s current token was presented.' },
  LEASE_LOST: { http: 503, exit: 4, summary: 'The host can no longer prove it holds its leases; it has fenced and stopped granting.' },
  NOT_REGISTERED: { http: 400, exit: 2, summary: 'The connection has not registered an owner yet.' },
  ALREADY_REGISTERED: { http: 409, exit: 2, summary: 'The connection already registered an owner, or the owner is bound to a live connection.' },
  NOT_HELD: { http: 404, exit: 2, summary: 'The owner does not hold the resource it tried to release.' },
  DENIED: { http: 403, exit: 5, summary: 'The connection is restricted to another owner, or its peer is not allowed.' },
  INVALID_REQUEST: { http: 400, exit: 2, summary: 'The request is malformed or fails validation; nothing was changed.' },
  UNKNOWN_METHOD: { http: 404, exit: 2, summary: 'The method is not part of this protocol version.' },
  UNSUPPORTED_VERSION: { http: 400, exit: 2, summary: 'The envelope names a protocol version this peer does not speak.' },
  LINE_TOO_LONG: { http: 413, exit: 2, summary: 'A request line exceeded the size limit; it was discarded.' },
  OUTSIDE_LOCKSPACE: { http: 400, exit: 2, summary: 'The resource resolves outside the roots its lockspace allows.' },
  NO_LOCKSPACE: { http: 404, exit: 2, summary: 'The named lockspace is not configured on this agent.' },
  RESOURCE_NOT_FOUND: { http: 404, exit: 2, summary: 'The resource path does not exist, so it has no canonical identity.' },
  STATE_INVALID: { http: 500, exit: 6, summary: 'A state file is stale, corrupt or belongs to another process; it was not loaded.' },
  LOCKS_HELD: { http: 409, exit: 7, summary: 'Refused to stop: locks are still held and dropping them was not asked for explicitly.' },
  SHUTTING_DOWN: { http: 503, exit: 4, summary: 'The process is stopping or re-executing and takes no new work.' },
  INVALID_CONFIG: { http: 500, exit: 2, summary: 'The configuration failed validation; every bad field is named.' },
  HOST_ALIVE: { http: 409, exit: 3, summary: 'The host named still renews its session: it is not dead (a fence declaration), or its name is taken (a second agent starting with it).' },
  NOT_LEADER: { http: 421, exit: 4, summary: 'This coordinator replica is not the leader; the leader’s address is in details.' },
  MIGRATION_CONFLICT: { http: 409, exit: 3, summary: 'The VM already has a migration in flight, or the migration named is past the point where the request could apply.' },
  MIGRATING: { http: 409, exit: 3, summary: 'The VM is being migrated; destroying it waits until the migration ends.' },
  MIGRATION_CANCELLED: { http: 409, exit: 3, summary: 'An operator cancelled the migration before its commit; it rolled back and the VM stays on its source.' },
  MIGRATION_NOT_FOUND: { http: 404, exit: 2, summary: 'No migration with that id is on record.' },
  VM_NOT_FOUND: { http: 404, exit: 2, summary: 'No VM with that uuid or name runs on the host named.' },
  UNAVAILABLE: { http: 503, exit: 4, summary: 'A peer (agent, etcd, NATS) did not answer in time.' },
  IO_ERROR: { http: 500, exit: 6, summary: 'A system call failed unexpectedly; errno is in details.' },
  INTERNAL: { http: 500, exit: 70, summary: 'A bug: an invariant did not hold. Please report it with the log.' },
} as const satisfies Record<string, { http: number; exit: number; summary: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;
export const ERROR_CODES = Object.keys(ERROR_CATALOGUE) as ErrorCode[];

export type ErrorDetails = Record<string, unknown>;

/** The shape an error takes on every wire. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details?: ErrorDetails;
}

export class BatonError extends Error {
  override readonly name = 'BatonError';
  readonly code: ErrorCode;
  readonly details: ErrorDetails | undefined;

  constructor(code: ErrorCode, message: string, options?: { details?: ErrorDetails; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }

  toBody(): ErrorBody {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }

  static fromBody(body: ErrorBody): BatonError {
    return new BatonError(body.code, body.message, body.details === undefined ? undefined : { details: body.details });
  }
}

/** Any thrown value as a BatonError: BatonErrors stay as they are, anything else gets `code`. */
export function asBatonError(err: unknown, code: ErrorCode = 'INTERNAL'): BatonError {
  if (err instanceof BatonError) return err;
  return new BatonError(code, err instanceof Error ? err.message : String(err), { cause: err });
}

/** Any thrown value as a wire error: BatonErrors keep their code, anything else is INTERNAL. */
/** errnos of a listen that fail for the configuration's reasons: an address that does not resolve, is not this host's, or is taken. */
const CONFIG_LISTEN_ERRNOS = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL', 'EADDRINUSE', 'EACCES']);

/** A failed listen on the configured `http` address: INVALID_CONFIG naming the field when the configuration is at fault, else the error as it is. */
export function httpListenError(err: unknown, host: string, port: number): unknown {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string' || !CONFIG_LISTEN_ERRNOS.has(code)) return err;
  return new BatonError('INVALID_CONFIG', `http: cannot listen on ${host}:${port} (${code})`, { details: { field: code === 'EADDRINUSE' ? 'http.port' : 'http.host', errno: code }, cause: err });
}

export function toErrorBody(err: unknown): ErrorBody {
  return asBatonError(err).toBody();
}

export function exitCodeFor(code: ErrorCode): number {
  return ERROR_CATALOGUE[code].exit;
}
