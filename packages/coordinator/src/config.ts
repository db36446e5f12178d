import { z } from 'zod';
import { BusConfigSchema } from '@baton/bus';
import { EtcdConfigSchema } from '@baton/etcd';
import { MigrationLimitsSchema } from './saga/migration-slots.js';

/** A coordinator replica's configuration: the same etcd and NATS as the agents, and its own HTTP address. */
export const CoordinatorConfigSchema = z.strictObject({
  /** This replica's name, unique in the cluster (its candidacy carries it). */
  id: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, - and _'),
  etcd: EtcdConfigSchema,
  nats: BusConfigSchema,
  http: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      /** 0 picks a free port. */
      port: z.number().int().min(0).max(65535).default(9472),
    })
    .prefault({}),
  /** The deadline of one agent step; `perform` (the send) and starting a VM get `sendTimeoutMs`. */
  stepTimeoutMs: z.number().int().positive().default(5_000),
  sendTimeoutMs: z.number().int().positive().default(60_000),
  /** The first delay before a step is sent again (doubling, up to 1 s). */
  retryMs: z.number().int().positive().default(50),
  /** How many migrations run at once, per host and in the cluster; the others wait, `begun`. */
  limits: MigrationLimitsSchema,
});
export type CoordinatorConfig = z.infer<typeof CoordinatorConfigSchema>;
export type CoordinatorConfigInput = z.input<typeof CoordinatorConfigSchema>;
