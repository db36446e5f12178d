import { constants as osConstants } from 'node:os';
import { asBatonError, exitCodeFor } from '@baton/core';
import { Agent } from './agent.js';
import { AgentConfigSchema } from './config.js';
import { createLogger } from './logger.js';
import { loadProcessConfig } from './process-config.js';
import { REEXEC_ENV } from './state/state-file.js';

/**
 * The agent as a process: with process-config.ts (shared with the coordinator's process), the
 * only place that reads the environment, installs signal handlers and exits. SIGUSR1 re-executes (an upgrade, every lock kept); SIGTERM and SIGINT stop only if
 * no lock is held.
 */
export async function runAgentProcess(opts: { configPath?: string | undefined }): Promise<void> {
  const config = loadProcessConfig(AgentConfigSchema, 'baton agent', opts.configPath);
  const logger = createLogger(config.logLevel, { host: config.hostId, pid: process.pid });
  // Handlers go in before the agent boots: Node's default SIGUSR1 action starts the inspector,
  // and a signal that arrives while booting must not be lost. It is acted on once the agent serves.
  let agent: Agent | undefined;
  let pending: 'reexec' | NodeJS.Signals | undefined;
  const reexec = (): void => {
    agent?.reexec().catch((err: unknown) => logger.error({ err }, 're-exec failed'));
  };
  process.on('SIGUSR1', () => (agent ? reexec() : (pending = 'reexec')));
  // A booting image that inherited locks (a re-exec) must not drop them: the stop waits until it
  // serves and answers as the agent does. A fresh start holds nothing yet (a crashed agent's
  // locks went with it; its VMs keep their own deadline): it may be stopped at once, even while
  // it waits for etcd.
  const inherits = process.env[REEXEC_ENV] !== undefined;
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (agent) agent.requestStop(signal);
      else if (inherits) pending = signal;
      else {
        logger.warn({ signal }, `${signal} while starting: nothing held yet, exiting`);
        process.exit(128 + osConstants.signals[signal]);
      }
    });
  }
  try {
    agent = await Agent.start({ config, logger });
  } catch (err) {
    const e = asBatonError(err);
    logger.fatal({ code: e.code, details: e.details, err }, `agent failed to start: ${e.message}`);
    process.stderr.write(`baton agent: ${e.code}: ${e.message}\n`);
    process.exit(exitCodeFor(e.code));
  }
  if (pending === 'reexec') reexec();
  else if (pending !== undefined) agent.requestStop(pending);
  await agent.closed;
  process.exit(0);
}
