import { httpListenError } from '@baton/core';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

export interface HealthSource {
  /** Undefined when ready; otherwise why not. */
  notReadyReason(): string | undefined;
}

/** /metrics, /livez and /readyz on a local port. */
export class HttpServer {
  private constructor(
    private readonly app: FastifyInstance,
    readonly port: number,
  ) {}

  static async start(opts: { host: string; port: number; registry: Registry; health: HealthSource }): Promise<HttpServer> {
    const app = Fastify({ logger: false });
    app.get('/metrics', async (_req, reply) => {
      reply.header('content-type', opts.registry.contentType);
      return opts.registry.metrics();
    });
    app.get('/livez', async () => ({ status: 'ok' }));
    app.get('/readyz', async (_req, reply) => {
      const reason = opts.health.notReadyReason();
      if (reason === undefined) return { status: 'ready' };
      reply.code(503);
      return { status: 'not-ready', reason };
    });
    try {
      await app.listen({ host: opts.host, port: opts.port });
    } catch (err) {
      await app.close();
      throw httpListenError(err, opts.host, opts.port);
    }
    const address = app.server.address();
    const port = typeof address === 'object' && address !== null ? address.port : opts.port;
    return new HttpServer(app, port);
  }

  async close(): Promise<void> {
    await this.app.close();
  }
}
