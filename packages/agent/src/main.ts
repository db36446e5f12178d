import { readFileSync } from 'node:fs';
import { BatonError, exitCodeFor, loadConfig } from '@baton/core';
import { Agent } from './agent.js';
import { AgentConfigSchema } from './config.js';
import { createLogger } from './logger.js';

/**
 * The agent as a process: the only place that reads the environment, installs signal handlers
 * and exits. SIGUSR1 re-executes (an upgrade, every lock kept); SIGTERM and SIGINT stop only if
 * no lock is held.
 */
export async function runAgentProcess(opts: { configPath?: string | undefined }): Promise<void> {
  let config;
  try {
    config = loadConfig(AgentConfigSchema, {
      env: process.env,
      ...(opts.configPath === undefined ? {} : { file: { path: opts.configPath, text: readFileSync(opts.configPath, 'utf8') } }),
    });
  } catch (err) {
    const e = err instanceof BatonError ? err : new BatonError('INVALID_CONFIG', (err as Error).message);
    process.stderr.write(`baton agent: ${e.code}: ${e.message}\n`);
    process.exit(exitCodeFor(e.code));
  }
  const logger = createLogger(config.logLevel, { host: config.hostId, pid: process.pid });
  let agent: Agent;
  try {
    agent = await Agent.start({ config, logger });
  } catch (err) {
    const e = err instanceof BatonError ? err : new BatonError('INTERNAL', (err as Error).message, { cause: err });
    logger.fatal({ code: e.code, details: e.details, err }, `agent failed to start: ${e.message}`);
    process.stderr.write(`baton agent: ${e.code}: ${e.message}\n`);
    process.exit(exitCodeFor(e.code));
  }
  process.on('SIGUSR1', () => {
    agent.reexec().catch((err: unknown) => logger.error({ err }, 're-exec failed'));
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => agent.requestStop(signal));
  await agent.closed;
  process.exit(0);
}
