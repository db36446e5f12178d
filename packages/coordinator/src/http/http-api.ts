import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { z } from 'zod';
import { asBatonError, BatonError, compareByStart, HostIdSchema, httpListenError, parseOrRefuse, ERROR_CATALOGUE, isSettled, VmDefinitionSchema, VmSpecSchema, type MigrationRecord } from '@baton/core';
import type { Coordinator } from '../coordinator.js';
import { DEFAULT_REFRESH_SECONDS, readDashboard, renderDashboard } from './dashboard.js';

export const MigrateBodySchema = z.strictObject({
  /** The VM's uuid or name. */
  vm: z.string().min(1).max(256),
  to: HostIdSchema,
});

/** `GET /?refresh=SECONDS`: how often the dashboard reloads (0: never). Other parameters are ignored, as a browser may add some. */
const DashboardQuerySchema = z.object({ refresh: z.coerce.number().int().min(0).max(3600).default(DEFAULT_REFRESH_SECONDS) });

export const StartVmBodySchema = VmSpecSchema.safeExtend({ host: HostIdSchema });

/**
 * A leader-only request that reached a follower: sent on to the leader, whose answer (status and
 * body) is relayed. NOT_LEADER if no replica leads, UNAVAILABLE if the leader does not answer.
 */
async function forward(c: Coordinator, method: string, path: string, body: unknown, reply: FastifyReply, timeoutMs: number): Promise<FastifyReply> {
  const leader = await c.leader();
  if (!leader || leader.id === c.id) throw new BatonError('NOT_LEADER', 'no coordinator leads right now; try again', { details: { leader: null } });
  const forwarded = await fetch(`${leader.url}${path}`, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) }).catch((err: unknown) => {
    throw new BatonError('UNAVAILABLE', `the leader ${leader.id} at ${leader.url} did not answer: ${(err as Error).message}`, { details: { leader } });
  });
  return reply.code(forwarded.status).send(await forwarded.json());
}

/**
 * How long a follower waits for the leader's answer to a new migration (taken at once), a cancel
 * (an etcd step in flight is waited for) and a definition change (an agent's).
 */
const FORWARD_MIGRATE_MS = 10_000;
const FORWARD_CANCEL_MS = 10_000;
const FORWARD_DEFINE_MS = 30_000;

/**
 * The coordinator's HTTP API. Reads are answered by any replica from etcd; a new migration, a
 * cancel and a definition change are taken by the leader, and a follower forwards them there (NOT_LEADER if
 * there is no leader to ask).
 */
export class CoordinatorHttp {
  private constructor(
    private readonly app: FastifyInstance,
    readonly url: string,
    private readonly closing: AbortController,
  ) {}

  static async listen(opts: { host: string; port: number; coordinator: () => Coordinator | undefined }): Promise<CoordinatorHttp> {
    const app = Fastify({
      logger: false,
      // Refusals before any route (a URL that does not decode, a parameter over the limit) get the
      // API's error body too.
      frameworkErrors: (err, _req, reply) => void (reply as FastifyReply).code(400).send({ error: new BatonError('INVALID_REQUEST', err.message, { details: { reason: err.code } }).toBody() }),
    });
    // Ends every progress stream when the server stops.
    const closing = new AbortController();
    const coordinatorOf = (): Coordinator => {
      const c = opts.coordinator();
      if (!c) throw new BatonError('SHUTTING_DOWN', 'the coordinator is starting');
      return c;
    };
    // Every route throws; this is where a failure becomes its catalogue status and body. Fastify's
    // own refusals (a body that is not JSON) are the client's: INVALID_REQUEST.
    app.setErrorHandler((err, _req, reply) => {
      const status = (err as { statusCode?: number }).statusCode;
      const e = err instanceof BatonError || status === undefined || status >= 500 ? asBatonError(err) : new BatonError('INVALID_REQUEST', (err as Error).message);
      return reply.code(ERROR_CATALOGUE[e.code].http).send({ error: e.toBody() });
    });

    app.setNotFoundHandler((req, reply) => {
      const e = new BatonError('UNKNOWN_METHOD', `the API has no ${req.method} ${req.url.split('?')[0]}`, { details: { method: req.method, url: req.url } });
      return reply.code(ERROR_CATALOGUE[e.code].http).send({ error: e.toBody() });
    });

    app.post('/v1/migrations', async (req, reply) => {
      const body = parseOrRefuse(MigrateBodySchema, req.body, 'invalid request');
      const c = coordinatorOf();
      if (c.isLeader) return reply.code(202).send(await c.migrate(body));
      return forward(c, 'POST', '/v1/migrations', body, reply, FORWARD_MIGRATE_MS);
    });

    app.get('/v1/migrations', async () => {
      const all = await coordinatorOf().store.list();
      return { migrations: all.map((s) => s.record).sort(compareByStart) };
    });

    app.get<{ Params: { id: string } }>('/v1/migrations/:id', async (req) => {
      return (await coordinatorOf().get(req.params.id)).record;
    });

    // 202: the migration rolls back (the cancel taken, or a failure first); 200: it has ended aborted.
    app.post<{ Params: { id: string } }>('/v1/migrations/:id/cancel', async (req, reply) => {
      const c = coordinatorOf();
      const path = `/v1/migrations/${encodeURIComponent(req.params.id)}/cancel`;
      if (!c.isLeader) return forward(c, 'POST', path, {}, reply, FORWARD_CANCEL_MS);
      const record = await c.cancel(req.params.id);
      return reply.code(record.phase === 'aborted' ? 200 : 202).send(record);
    });

    // Progress as server-sent events: every version of the record, until it is settled.
    app.get<{ Params: { id: string } }>('/v1/migrations/:id/events', async (req, reply) => {
      const c = coordinatorOf();
      const stored = await c.get(req.params.id);
      reply.hijack();
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      const gone = new AbortController();
      req.raw.on('close', () => gone.abort());
      closing.signal.addEventListener('abort', () => gone.abort(), { once: true });
      const write = (record: MigrationRecord): void => {
        reply.raw.write(`event: ${isSettled(record) ? 'end' : 'progress'}\ndata: ${JSON.stringify(record)}\n\n`);
      };
      try {
        await c.follow(stored, gone.signal, write);
      } catch (err) {
        reply.raw.write(`event: error\ndata: ${JSON.stringify(asBatonError(err).toBody())}\n\n`);
      }
      reply.raw.end();
    });

    app.get('/v1/vms', async () => {
      return { vms: await coordinatorOf().vms() };
    });

    app.post('/v1/vms', async (req, reply) => {
      const { host, ...spec } = parseOrRefuse(StartVmBodySchema, req.body, 'invalid request');
      return reply.code(201).send(await coordinatorOf().startVm(host, spec));
    });

    app.delete<{ Params: { vm: string } }>('/v1/vms/:vm', async (req) => {
      return await coordinatorOf().destroyVm(req.params.vm);
    });

    // 200 when applied to the VM now, 202 when staged in the VM's migration (applied when it ends).
    app.put<{ Params: { vm: string } }>('/v1/vms/:vm/definition', async (req, reply) => {
      const definition = parseOrRefuse(VmDefinitionSchema, req.body, 'invalid request');
      const c = coordinatorOf();
      if (!c.isLeader) return forward(c, 'PUT', `/v1/vms/${encodeURIComponent(req.params.vm)}/definition`, definition, reply, FORWARD_DEFINE_MS);
      const answer = await c.define(req.params.vm, definition);
      return reply.code('staged' in answer ? 202 : 200).send(answer);
    });

    app.get('/v1/hosts', async () => {
      return { hosts: await coordinatorOf().view.hosts() };
    });

    app.get('/v1/leases', async () => {
      return { leases: await coordinatorOf().view.leases() };
    });

    app.get('/v1/status', async () => {
      const c = coordinatorOf();
      const [replicas, hosts, migrations] = await Promise.all([c.replicas(), c.view.hosts(), c.store.list()]);
      return {
        replica: { id: c.id, leader: c.isLeader },
        leader: replicas[0] ?? null,
        replicas,
        hosts,
        open: migrations.filter((m) => !isSettled(m.record)).map((m) => m.record),
      };
    });

    // The dashboard: a page with no script and nothing loaded from elsewhere, which the policy
    // below enforces (a VM's name is shown as text even if it is markup).
    app.get('/', async (req, reply) => {
      const { refresh } = parseOrRefuse(DashboardQuerySchema, req.query, 'invalid dashboard parameters');
      const html = renderDashboard(await readDashboard(coordinatorOf(), refresh));
      return reply
        .header('content-type', 'text/html; charset=utf-8')
        .header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        .header('x-content-type-options', 'nosniff')
        .header('cache-control', 'no-store')
        .send(html);
    });

    app.get('/metrics', async (_req, reply) => {
      const { registry } = coordinatorOf().metrics;
      reply.header('content-type', registry.contentType);
      return registry.metrics();
    });
    app.get('/livez', async () => ({ status: 'ok' }));
    app.get('/readyz', async (_req, reply) => {
      const c = opts.coordinator();
      if (!c) return reply.code(503).send({ status: 'not-ready', reason: 'starting' });
      return { status: 'ready', leader: c.isLeader };
    });

    try {
      await app.listen({ host: opts.host, port: opts.port });
    } catch (err) {
      await app.close();
      throw httpListenError(err, opts.host, opts.port);
    }
    const address = app.server.address();
    const port = typeof address === 'object' && address !== null ? address.port : opts.port;
    const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    return new CoordinatorHttp(app, `http://${host}:${port}`, closing);
  }

  async close(): Promise<void> {
    this.closing.abort();
    await this.app.close();
  }
}
