import { z } from 'zod';
import { LOCK_MODES } from '../model.js';

/**
 * What the cluster keeps in etcd, and the views of it the agent serves. Every value is versioned
 * JSON; a value that fails its schema is reported, never guessed at.
 */

/**
 * A host's name in the cluster: one DNS label (letters, digits, '-', '_'; at most 63). It is a
 * token of NATS subjects (`baton.<cluster>.agent.<host>.<verb>`) and a segment of etcd keys, so a
 * '.', a space or a NATS wildcard ('*', '>') would route one host's commands to another.
 */
export const HostIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, "a host name is one DNS label: letters, digits, '-' and '_', at most 63, no '.'");

/** How to stop a VM whose host can no longer prove it holds the VM's leases (sanlock's killpath). */
export const LEASE_LOSS_POLICIES = ['kill', 'pause', 'killpath'] as const;
export type LeaseLossPolicy = (typeof LEASE_LOSS_POLICIES)[number];

export const LeaseLossSchema = z
  .strictObject({
    /**
     * `kill`: SIGTERM, then SIGKILL; `pause`: stop the VM (its hypervisor driver; SIGSTOP for a
     * process) and keep it, so it can be resumed with new tokens when the host recovers;
     * `killpath`: run the command (argv) with the owner's uuid and pid appended, then SIGKILL if
     * the owner still runs at the fence deadline.
     */
    policy: z.enum(LEASE_LOSS_POLICIES).default('kill'),
    killpath: z.array(z.string().min(1)).min(1).optional(),
  })
  .refine((p) => (p.policy === 'killpath') === (p.killpath !== undefined), { message: 'killpath is given exactly when the policy is killpath' });
export type LeaseLoss = z.infer<typeof LeaseLossSchema>;

/** The value of one lease key. Its token is the key's mod revision in etcd, not a field. */
export const LeaseValueSchema = z.object({
  v: z.literal(1),
  host: z.string(),
  /** Enough for a restarted agent to find the owner's process and fence it the way it asked. */
  owner: z.object({ uuid: z.string(), name: z.string(), pid: z.number().optional(), startTime: z.number().optional(), onLeaseLoss: LeaseLossSchema.optional() }),
  lockspace: z.string(),
  resource: z.string(),
  mode: z.enum(LOCK_MODES),
  since: z.string(),
  /** A nonce per grant: after an ambiguous commit (the reply was lost) the agent reads it back. */
  grant: z.string(),
});
export type LeaseValue = z.infer<typeof LeaseValueSchema>;

/** The host record, attached to the host's session lease: it vanishes with the session. */
export const HostRecordSchema = z.object({
  v: z.literal(1),
  host: z.string(),
  address: z.string(),
  version: z.string(),
  pid: z.number(),
  lockspaces: z.array(z.string()),
  startedAt: z.string(),
  ttlSeconds: z.number(),
});
export type HostRecord = z.infer<typeof HostRecordSchema>;

/** `baton host fence --i-have-fenced`: kept in etcd, never attached to a lease. */
export const FenceAuditSchema = z.object({
  v: z.literal(1),
  host: z.string(),
  by: z.object({ host: z.string(), uid: z.number().optional(), pid: z.number().optional() }),
  reason: z.string(),
  at: z.string(),
  released: z.array(z.object({ lockspace: z.string(), resource: z.string(), token: z.number(), owner: z.string() })),
});
export type FenceAudit = z.infer<typeof FenceAuditSchema>;

export const ClusterLeaseSchema = z.object({
  lockspace: z.string(),
  resource: z.string(),
  mode: z.enum(LOCK_MODES),
  host: z.string(),
  owner: z.object({ uuid: z.string(), name: z.string(), onLeaseLoss: LeaseLossSchema.optional() }),
  token: z.number(),
  since: z.string(),
  session: z.string(),
});
export type ClusterLease = z.infer<typeof ClusterLeaseSchema>;

export const HostViewSchema = HostRecordSchema.omit({ v: true }).extend({
  session: z.string(),
  /** Seconds before etcd expires the session if no keepalive arrives (-1: already gone). */
  ttlLeftSeconds: z.number(),
  /** etcd restarts the TTL when a keepalive arrives, so this is the age of the last one. */
  lastKeepaliveAgoSeconds: z.number(),
});
export type HostView = z.infer<typeof HostViewSchema>;

/** The host's standing in the cluster, as the watchdog and /readyz see it. */
export const SESSION_STATES = ['local', 'valid', 'at-risk', 'fenced', 'recovering'] as const;
export type SessionState = (typeof SESSION_STATES)[number];
