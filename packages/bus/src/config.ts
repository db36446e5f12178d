import { z } from 'zod';
import { PasswordAuthSchema, TlsFilesSchema } from '@baton/core';

/**
 * How a Baton process reaches NATS. Subjects live under `baton.<cluster>.` unless `prefix` says otherwise.
 *
 * TLS: a `tls` section makes TLS required on every server, whatever its scheme: NATS negotiates
 * TLS on its one client port (its greeting says whether it demands it), so a `nats://` server
 * that does not offer TLS is refused rather than spoken to in clear. `tls://` says so in the URL,
 * and needs the section (the cluster's CA, as `https://` etcd endpoints do).
 */
export const BusConfigSchema = z
  .strictObject({
    servers: z.array(z.string().regex(/^(nats|tls):\/\/[^/]+$/, 'nats://host:port or tls://host:port')).min(1),
    cluster: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, - and _').default('default'),
    prefix: z.string().regex(/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/, 'dot-separated tokens').optional(),
    /** Deadline of a command when the caller gives none. */
    requestTimeoutMs: z.number().int().positive().default(2000),
    tls: TlsFilesSchema.optional(),
    /** A NATS user (nats-server's `authorization { users }`); its permissions decide what this process may serve and send. */
    auth: PasswordAuthSchema.optional(),
  })
  .superRefine((c, ctx) => {
    if (c.tls === undefined && c.servers.some((s) => s.startsWith('tls:'))) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'tls:// servers need tls.caFile' });
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
