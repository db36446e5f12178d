import type { MonotonicClock } from '@baton/core';
import type { CoordinatorConfig } from './config.js';
import { Coordinator } from './coordinator.js';
import { CoordinatorHttp } from './http/http-api.js';
import type { Log } from './log.js';

/** A coordinator replica with its HTTP API: the server listens first, so the candidacy carries its address. */
export class CoordinatorService implements AsyncDisposable {
  private closing: Promise<void> | undefined;

  private constructor(
    readonly coordinator: Coordinator,
    readonly http: CoordinatorHttp,
  ) {}

  static async start(opts: { config: CoordinatorConfig; log: Log; clock?: MonotonicClock }): Promise<CoordinatorService> {
    let coordinator: Coordinator | undefined;
    const http = await CoordinatorHttp.listen({ host: opts.config.http.host, port: opts.config.http.port, coordinator: () => coordinator });
    try {
      coordinator = await Coordinator.start({ ...opts, url: http.url });
    } catch (err) {
      await http.close();
      throw err;
    }
    return new CoordinatorService(coordinator, http);
  }

  get url(): string {
    return this.http.url;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.http.close();
      await this.coordinator.close();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
