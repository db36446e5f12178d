/** The coordinator logs through whatever its host process gives it (pino's shape: fields, then a message). */
export interface Log {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}
