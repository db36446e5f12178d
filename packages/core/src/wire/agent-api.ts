import { z } from 'zod';
import { LIVENESS, LOCK_MODES, OwnerSchema, ResourceRefSchema, UUID } from '../model.js';
import { LOCKSPACE_KINDS } from '../lockspace.js';
import { ClusterLeaseSchema, HostViewSchema, LeaseLossSchema, SESSION_STATES } from './cluster.js';

/**
 * The agent's local API (UNIX socket, one JSON envelope per line). Each method names the schema
 * of its params and of its result; the agent validates params, clients may validate results.
 */

/** etcd allows 128 operations per transaction; one atomic acquire must fit in one. */
export const MAX_RESOURCES_PER_REQUEST = 128;

const Resources = z.array(ResourceRefSchema).min(1).max(MAX_RESOURCES_PER_REQUEST);

export const GrantSchema = z.object({
  lockspace: z.string(),
  resource: z.string(),
  mode: z.enum(LOCK_MODES),
  token: z.number().int().positive(),
  lockPath: z.string(),
  since: z.string(),
});
export type Grant = z.infer<typeof GrantSchema>;

/** What `inquire` returns: an owner's whole lock state, the document a migration carries. */
export const LockStateDocument = z.object({
  kind: z.literal('baton.lock-state'),
  version: z.literal(1),
  host: z.string(),
  owner: OwnerSchema,
  liveness: z.enum(LIVENESS),
  locks: z.array(GrantSchema),
});
export type LockStateDocument = z.infer<typeof LockStateDocument>;

/** One holding of a lock: a shared resource has one per owner, each with its own token. */
export const LockInfoSchema = GrantSchema.extend({
  owner: z.object({ uuid: z.string(), name: z.string(), pid: z.number().optional() }),
});
export type LockInfo = z.infer<typeof LockInfoSchema>;

export const AGENT_METHODS = {
  hello: {
    params: z.strictObject({}).default({}),
    result: z.object({
      protocol: z.number(),
      host: z.string(),
      pid: z.number(),
      version: z.string(),
      /** Re-execs since the process started: a client can see that an upgrade happened. */
      generation: z.number(),
      httpPort: z.number().nullable(),
      ofdLocks: z.boolean(),
    }),
  },
  register: {
    params: z.strictObject({
      owner: OwnerSchema,
      liveness: z.enum(LIVENESS).default('connection'),
      restricted: z.boolean().default(false),
      /** What the agent does to this owner if the host loses its cluster session. */
      onLeaseLoss: LeaseLossSchema.prefault({}),
    }),
    result: z.object({ owner: OwnerSchema, liveness: z.enum(LIVENESS), restricted: z.boolean(), onLeaseLoss: LeaseLossSchema }),
  },
  acquire: {
    params: z.strictObject({ resources: Resources }),
    result: z.object({ grants: z.array(GrantSchema) }),
  },
  release: {
    /** Without resources: everything the owner holds. */
    params: z.strictObject({ resources: Resources.optional() }).default({}),
    result: z.object({ released: z.array(GrantSchema) }),
  },
  inquire: {
    params: z.strictObject({ owner: UUID.optional() }).default({}),
    result: LockStateDocument,
  },
  locks: {
    params: z.strictObject({}).default({}),
    result: z.object({
      host: z.string(),
      lockspaces: z.array(z.object({ name: z.string(), kind: z.enum(LOCKSPACE_KINDS), dir: z.string().optional() })),
      locks: z.array(LockInfoSchema),
    }),
  },
  /**
   * The owner's watchdog (sanlock's wdmd role, in the VM process): until when the host can prove it
   * holds the owner's leases, on the host's monotonic clock (`process.hrtime`, ms). A VM that cannot
   * renew this before `validUntil` stops writing on its own, even if the agent is dead.
   */
  watchdog: {
    params: z.strictObject({}).default({}),
    result: z.object({
      state: z.enum(SESSION_STATES),
      /** null: no cluster configured, local locks only, no deadline. */
      validUntil: z.number().nullable(),
      locks: z.array(GrantSchema),
    }),
  },
  /** The cluster view from etcd: every lease of every host. */
  clusterLocks: {
    params: z.strictObject({}).default({}),
    result: z.object({ leases: z.array(ClusterLeaseSchema) }),
  },
  hosts: {
    params: z.strictObject({}).default({}),
    result: z.object({ hosts: z.array(HostViewSchema) }),
  },
  /**
   * An operator declares a dead host fenced (powered off, VMs gone) and frees its leases before its
   * session expires. Refused while that host's session is alive; audited in etcd and the log.
   */
  fenceHost: {
    params: z.strictObject({ host: z.string().min(1), iHaveFenced: z.literal(true), reason: z.string().min(1).max(1024) }),
    result: z.object({ host: z.string(), released: z.number(), audit: z.string() }),
  },
  shutdown: {
    params: z.strictObject({ releaseAll: z.boolean().default(false) }).default({ releaseAll: false }),
    result: z.object({ released: z.number() }),
  },
} as const;

export type AgentMethod = keyof typeof AGENT_METHODS;
export type AgentParams<M extends AgentMethod> = z.input<(typeof AGENT_METHODS)[M]['params']>;
export type AgentParsedParams<M extends AgentMethod> = z.output<(typeof AGENT_METHODS)[M]['params']>;
export type AgentResult<M extends AgentMethod> = z.infer<(typeof AGENT_METHODS)[M]['result']>;

export function isAgentMethod(method: string): method is AgentMethod {
  return Object.hasOwn(AGENT_METHODS, method);
}
