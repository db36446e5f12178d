import { z } from 'zod';
import { PasswordAuthSchema, TlsFilesSchema, TtlSeconds } from '@baton/core';

/** How a Baton process reaches etcd. Shared by the agent's and the coordinator's config. */
export const EtcdConfigSchema = z
  .strictObject({
    /** Client URLs, `http://` or `https://`. */
    endpoints: z.array(z.url({ protocol: /^https?$/ })).min(1),
    /** The cluster's name: keys live under `/baton/<cluster>/` unless `prefix` says otherwise. */
    cluster: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, - and _').default('default'),
    prefix: z.string().startsWith('/').endsWith('/').optional(),
    /** The session TTL: the one timing base every other cluster timeout derives from. */
    ttlSeconds: TtlSeconds.default(10),
    /**
     * Chubby's lock-delay: after a holder vanished without releasing (its session expired or an
     * operator fenced its host), its resources stay unavailable this much longer. 0: off.
     */
    lockDelayMs: z.number().int().min(0).max(600_000).default(0),
    tls: TlsFilesSchema.optional(),
    auth: PasswordAuthSchema.optional(),
    /** Longest a single request may take before it counts as failed (0: a quarter of the TTL). */
    requestTimeoutMs: z.number().int().min(0).default(0),
  })
  .superRefine((c, ctx) => {
    const tls = c.endpoints.some((e) => e.startsWith('https:'));
    if (tls && c.tls === undefined) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'https endpoints need tls.caFile' });
    if (!tls && c.tls !== undefined) ctx.addIssue({ code: 'custom', path: ['endpoints'], message: 'tls is configured but the endpoints are http://' });
  });
export type EtcdConfig = z.infer<typeof EtcdConfigSchema>;
export type EtcdConfigInput = z.input<typeof EtcdConfigSchema>;

export function keyPrefix(config: EtcdConfig): string {
  return config.prefix ?? `/baton/${config.cluster}/`;
}
