import { z } from 'zod';
import { LIVENESS, LOCK_MODES, OwnerSchema, ResourceRefSchema, UUID } from '../model.js';
import { LOCKSPACE_KINDS } from '../lockspace.js';

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
    }),
    result: z.object({ owner: OwnerSchema, liveness: z.enum(LIVENESS), restricted: z.boolean() }),
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
