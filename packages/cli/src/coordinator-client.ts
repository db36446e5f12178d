import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import {
  BatonError,
  DefineAnswerSchema,
  DestroyedVmSchema,
  ErrorBodySchema,
  HostedVmSchema,
  HostViewSchema,
  MigrationRecordSchema,
  parseOrRefuse,
  isSettled,
  type DefineAnswer,
  type DestroyedVm,
  type ErrorBody,
  type HostedVm,
  type MigrationRecord,
  type VmDefinitionInput,
  type VmSpecInput,
} from '@baton/core';
import { readSse, type SseEvent } from './sse.js';

/** Where the CLI finds a coordinator when neither --coordinator nor BATON_COORDINATOR_URL says. */
export const DEFAULT_COORDINATOR_URL = 'http://127.0.0.1:9472';
/** One request's deadline: a VM start or destroy waits for an agent's step (5 s by default) and a follower's forward. */
export const REQUEST_TIMEOUT_MS = 30_000;
/** How long `baton migrate` follows a migration by default: a send may take the coordinator's 60 s and its retries. */
export const FOLLOW_TIMEOUT_MS = 600_000;
/** The pause before a progress stream that broke off is opened again. */
const REOPEN_DELAY_MS = 250;

/** The coordinator a command talks to: --coordinator, else BATON_COORDINATOR_URL, else the default. */
export function coordinatorUrlOf(opts: { coordinator?: string }): string {
  const raw = opts.coordinator ?? process.env.BATON_COORDINATOR_URL ?? DEFAULT_COORDINATOR_URL;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new BatonError('INVALID_REQUEST', `coordinator URL "${raw}" is not a URL`, { details: { url: raw } });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BatonError('INVALID_REQUEST', `coordinator URL "${raw}" is not http(s)`, { details: { url: raw } });
  return url.href.replace(/\/+$/, '');
}

// Composed from core's schemas: only the envelopes the HTTP API wraps them in are new here.
const ReplicaSchema = z.object({ id: z.string(), url: z.string() });
const StatusSchema = z.object({
  replica: z.object({ id: z.string(), leader: z.boolean() }),
  leader: ReplicaSchema.nullable(),
  replicas: z.array(ReplicaSchema),
  hosts: z.array(HostViewSchema),
  open: z.array(MigrationRecordSchema),
});
export type CoordinatorStatus = z.infer<typeof StatusSchema>;

/** Why a request never got an answer, as the catalogue says it: the peer is unavailable. */
function unreachable(url: string, err: unknown, timeoutMs: number): BatonError {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return new BatonError('UNAVAILABLE', `coordinator at ${url} did not answer within ${timeoutMs} ms`, { details: { url }, cause: err });
  const why = e.cause?.code ?? e.cause?.message ?? e.message;
  return new BatonError('UNAVAILABLE', `cannot reach the coordinator at ${url} (${why})`, { details: { url, ...(e.cause?.code ? { errno: e.cause.code } : {}) }, cause: err });
}

/** A non-2xx answer as the error it carries; one without a catalogue body (a proxy's page) is UNAVAILABLE. */
async function failure(url: string, res: Response): Promise<BatonError> {
  // A body cut off on the way is no body: the status alone is reported.
  const text = await res.text().catch(() => '');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const parsed = ErrorBodySchema.safeParse((body as { error?: unknown } | undefined)?.error);
  if (parsed.success) return BatonError.fromBody(parsed.data as ErrorBody);
  return new BatonError('UNAVAILABLE', `${url} answered HTTP ${res.status} without a Baton error: ${text.slice(0, 200)}`, { details: { url, status: res.status } });
}

/** The coordinator's HTTP API, for the CLI: every call has a deadline, every answer is checked against core's schemas. */
export class CoordinatorClient {
  constructor(
    readonly baseUrl: string,
    private readonly timeoutMs = REQUEST_TIMEOUT_MS,
  ) {}

  static from(opts: { coordinator?: string }): CoordinatorClient {
    return new CoordinatorClient(coordinatorUrlOf(opts));
  }

  /** One request; a network failure or a timeout is UNAVAILABLE naming the URL. */
  private async send(path: string, init: { method?: string; body?: unknown; signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Response> {
    const url = `${this.baseUrl}${path}`;
    const timeoutMs = init.timeoutMs ?? this.timeoutMs;
    let res: Response;
    try {
      res = await fetch(url, {
        method: init.method ?? 'GET',
        headers: init.body === undefined ? {} : { 'content-type': 'application/json' },
        ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
        signal: init.signal ?? AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw unreachable(url, err, timeoutMs);
    }
    if (!res.ok) throw await failure(url, res);
    return res;
  }

  private async json<T>(schema: z.ZodType<T>, path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
    const url = `${this.baseUrl}${path}`;
    const res = await this.send(path, init);
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      // Cut off (or out of time) while the answer was on its way.
      throw unreachable(url, err, this.timeoutMs);
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new BatonError('INTERNAL', `${init.method ?? 'GET'} ${url}: the answer is not JSON: ${text.slice(0, 200)}`, { details: { url } });
    }
    return parseOrRefuse(schema, body, `${init.method ?? 'GET'} ${url}: unexpected answer`, 'INTERNAL', { url });
  }

  migrate(vm: string, to: string): Promise<MigrationRecord> {
    return this.json(MigrationRecordSchema, '/v1/migrations', { method: 'POST', body: { vm, to } });
  }

  /** Cancel a migration before its commit: the record as the leader has it once the cancel is taken. */
  cancel(id: string): Promise<MigrationRecord> {
    return this.json(MigrationRecordSchema, `/v1/migrations/${encodeURIComponent(id)}/cancel`, { method: 'POST', body: {} });
  }

  async migrations(): Promise<MigrationRecord[]> {
    return (await this.json(z.object({ migrations: z.array(MigrationRecordSchema) }), '/v1/migrations')).migrations;
  }

  migration(id: string): Promise<MigrationRecord> {
    return this.json(MigrationRecordSchema, `/v1/migrations/${encodeURIComponent(id)}`);
  }

  async vms(): Promise<HostedVm[]> {
    return (await this.json(z.object({ vms: z.array(HostedVmSchema) }), '/v1/vms')).vms;
  }

  startVm(host: string, spec: VmSpecInput): Promise<HostedVm> {
    return this.json(HostedVmSchema, '/v1/vms', { method: 'POST', body: { host, ...spec } });
  }

  destroyVm(vm: string): Promise<DestroyedVm> {
    return this.json(DestroyedVmSchema, `/v1/vms/${encodeURIComponent(vm)}`, { method: 'DELETE' });
  }

  defineVm(vm: string, definition: VmDefinitionInput): Promise<DefineAnswer> {
    return this.json(DefineAnswerSchema, `/v1/vms/${encodeURIComponent(vm)}/definition`, { method: 'PUT', body: definition });
  }

  status(): Promise<CoordinatorStatus> {
    return this.json(StatusSchema, '/v1/status');
  }

  /**
   * Follow a migration's progress stream until the record is settled; `onRecord` sees every
   * version. A stream that breaks off early (the replica serving it stopped, a proxy cut it) is
   * opened again: it starts over from the current record, so nothing is lost. A replica nobody
   * answers on is UNAVAILABLE; the whole follow is bounded by `timeoutMs`.
   */
  async follow(id: string, onRecord: (record: MigrationRecord) => void, timeoutMs = FOLLOW_TIMEOUT_MS): Promise<MigrationRecord> {
    const deadline = AbortSignal.timeout(timeoutMs);
    const path = `/v1/migrations/${encodeURIComponent(id)}/events`;
    const late = (cause: unknown): BatonError =>
      new BatonError('UNAVAILABLE', `migration ${id} did not end within ${timeoutMs} ms; it goes on without this command: baton migrations ${id}`, {
        details: { migration: id, url: this.baseUrl },
        cause,
      });
    for (;;) {
      const res = await this.send(path, { signal: deadline, timeoutMs }).catch((err: unknown) => {
        throw deadline.aborted ? late(err) : err;
      });
      try {
        for await (const event of readSse(res.body!)) {
          const record = eventRecord(id, event);
          if (record === undefined) continue;
          onRecord(record);
          if (isSettled(record)) return record;
        }
      } catch (err) {
        if (err instanceof BatonError) throw err;
        if (deadline.aborted) throw late(err);
        // Cut off mid-stream: open it again below, as for a stream that ended.
      }
      // A pause before opening it again, so a replica that keeps ending streams is not hammered.
      await delay(REOPEN_DELAY_MS, undefined, { signal: deadline }).catch((err: unknown) => {
        throw late(err);
      });
    }
  }
}

/** An event's record; an `error` event is thrown as the error it carries; other events are skipped. */
function eventRecord(id: string, event: SseEvent): MigrationRecord | undefined {
  if (event.event !== 'progress' && event.event !== 'end' && event.event !== 'error') return undefined;
  let data: unknown;
  try {
    data = JSON.parse(event.data);
  } catch {
    throw new BatonError('INTERNAL', `migration ${id}: a ${event.event} event that is not JSON: ${event.data.slice(0, 200)}`);
  }
  if (event.event === 'error') {
    const body = ErrorBodySchema.safeParse(data);
    throw body.success ? BatonError.fromBody(body.data as ErrorBody) : new BatonError('INTERNAL', `migration ${id}: malformed error event`);
  }
  return parseOrRefuse(MigrationRecordSchema, data, `migration ${id}: unexpected record in the progress stream`, 'INTERNAL');
}
