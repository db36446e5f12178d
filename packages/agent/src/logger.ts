import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * JSON logs on stdout, written synchronously: the agent may execve or be killed at any moment,
 * and a buffered line would be lost with the image.
 */
export function createLogger(level: string, base: Record<string, unknown>): Logger {
  return pino({ level, base, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: 1, sync: true }));
}
