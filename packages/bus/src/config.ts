import { z } from 'zod';

/** How a Baton process reaches NATS. Subjects live under `baton.<cluster>.` unless `prefix` says otherwise. */
export const BusConfigSchema = z.strictObject({
  servers: z.array(z.string().regex(/^nats:\/\/[^/]+$/, 'nats://host:port')).min(1),
  cluster: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, - and _').default('default'),
  prefix: z.string().regex(/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/, 'dot-separated tokens').optional(),
  /** Deadline of a command when the caller gives none. */
  requestTimeoutMs: z.number().int().positive().default(2000),
});
export type BusConfig = z.infer<typeof BusConfigSchema>;
export type BusConfigInput = z.input<typeof BusConfigSchema>;

/** Subject names, in one place. */
export class Subjects {
  readonly root: string;

  constructor(config: BusConfig) {
    this.root = config.prefix ?? `baton.${config.cluster}`;
  }

  /** A command to one host's agent: `baton.<cluster>.agent.<host>.<verb>`. */
  agent(host: string, verb: string): string {
    return `${this.root}.agent.${host}.${verb}`;
  }

  /** An event: `baton.<cluster>.events.<kind>[.<id>]`. */
  event(kind: string, id?: string): string {
    return `${this.root}.events.${kind}${id === undefined ? '' : `.${id}`}`;
  }

  get allEvents(): string {
    return `${this.root}.events.>`;
  }
}
