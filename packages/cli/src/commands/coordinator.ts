import type { Command } from 'commander';
import { asBatonError, exitCodeFor } from '@baton/core';
import { createLogger, loadProcessConfig } from '@baton/agent';
import { CoordinatorConfigSchema, CoordinatorService } from '@baton/coordinator';

/** `baton coordinator`: one coordinator replica, until SIGTERM or SIGINT. */
export function registerCoordinatorCommand(program: Command): void {
  program
    .command('coordinator')
    .description('run a coordinator replica (config: --config file < BATON_* environment)')
    .option('-c, --config <file>', 'JSON configuration file')
    .action(async (opts: { config?: string }) => {
      const config = loadProcessConfig(CoordinatorConfigSchema, 'baton coordinator', opts.config);
      const log = createLogger('info', { coordinator: config.id, pid: process.pid });
      const stopping = Promise.withResolvers<void>();
      for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => stopping.resolve());
      let service: CoordinatorService;
      try {
        service = await CoordinatorService.start({ config, log });
      } catch (err) {
        const e = asBatonError(err);
        log.fatal({ code: e.code, details: e.details }, `coordinator failed to start: ${e.message}`);
        process.stderr.write(`baton coordinator: ${e.code}: ${e.message}\n`);
        process.exit(exitCodeFor(e.code));
      }
      log.info({ url: service.url }, `coordinator ${config.id} serving at ${service.url}`);
      await stopping.promise;
      await service.close();
      log.info({}, `coordinator ${config.id} stopped`);
      process.exit(0);
    });
}
