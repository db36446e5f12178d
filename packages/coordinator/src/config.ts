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
  /** Where migrations are kept once they have ended (history.ts). */
  history: z
    .strictObject({
      /** The JetStream stream over `<subject prefix>.events.>` (default `BATON_<cluster>`). */
      stream: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, - and _').optional(),
      /** How long the stream keeps an event; 0 for ever. */
      maxAgeDays: z.number().int().min(0).default(90),
      /** Settled records kept in etcd (the newest); older ones are removed once the stream holds them. */
      keepClosed: z.number().int().min(0).default(1000),
    })
    .prefault({}),
});
export type CoordinatorConfig = z.infer<typeof CoordinatorConfigSchema>;
export type CoordinatorConfigInput = z.input<typeof CoordinatorConfigSchema>;
export type HistoryConfig = CoordinatorConfig['history'];
