import { z } from 'zod';
import { LOCK_MODES, UUID } from '../model.js';
import { MIGRATION_STEPS } from '../migration/phases.js';
import { MigrationRecordSchema } from '../migration/record.js';
import { GrantSchema, MAX_RESOURCES_PER_REQUEST } from './agent-api.js';
import { LeaseLossSchema } from './cluster.js';

/**
 * The agent's commands over NATS (`baton.<cluster>.agent.<host>.<verb>`): the VMs its hypervisor
 * driver runs, and the agent's steps of a migration. Same envelope and error codes as the socket.
 */

export const VM_STATES = ['incoming', 'paused', 'running'] as const;
export type VmState = (typeof VM_STATES)[number];

export const VmDiskSchema = z.strictObject({
  path: z.string().startsWith('/', 'must be an absolute path').max(4096),
  mode: z.enum(LOCK_MODES).default('exclusive'),
  /** The agent's default lockspace when unset. */
  lockspace: z.string().min(1).max(64).optional(),
});
export type VmDisk = z.infer<typeof VmDiskSchema>;

/** What it takes to start a VM (a libvirt domain definition, reduced to what locking needs). */
export const VmSpecSchema = z.strictObject({
  uuid: UUID.transform((u) => u.toLowerCase()),
  name: z.string().min(1).max(256),
  disks: z.array(VmDiskSchema).min(1).max(MAX_RESOURCES_PER_REQUEST),
  onLeaseLoss: LeaseLossSchema.prefault({}),
});
export type VmSpec = z.infer<typeof VmSpecSchema>;
export type VmSpecInput = z.input<typeof VmSpecSchema>;

export const VmInfoSchema = z.object({
  uuid: z.string(),
  name: z.string(),
  pid: z.number().int(),
  state: z.enum(VM_STATES),
  /** Progress of the guest (the sim's write counter); carried over by a migration. */
  seq: z.number().int().nonnegative(),
});
export type VmInfo = z.infer<typeof VmInfoSchema>;

/** A VM as its agent reports it: the hypervisor's view and the locks the agent holds for it. */
export const HostedVmSchema = VmInfoSchema.extend({ host: z.string(), locks: z.array(GrantSchema) });
export type HostedVm = z.infer<typeof HostedVmSchema>;

export const IdempotencyKeySchema = z.strictObject({
  migration: z.string().min(1).max(128),
  step: z.enum(MIGRATION_STEPS),
  token: z.number().int().nonnegative(),
});

/**
 * A migration step for an agent: the record as the coordinator holds it (everything the agent
 * needs: VM, hosts, resources, tokens, the incoming address) and the command's idempotency key.
 */
export const MigrationStepParamsSchema = z.strictObject({ key: IdempotencyKeySchema, record: MigrationRecordSchema });
export type MigrationStepParams = z.infer<typeof MigrationStepParamsSchema>;

export const AGENT_STEP_VERBS = ['prepare', 'perform', 'resume', 'confirm', 'discard', 'restore'] as const;
export type AgentStepVerb = (typeof AGENT_STEP_VERBS)[number];

export const VM_COMMANDS = {
  'vm.start': { params: VmSpecSchema, result: HostedVmSchema },
  'vm.list': { params: z.strictObject({}).default({}), result: z.object({ vms: z.array(HostedVmSchema) }) },
  'vm.destroy': { params: z.strictObject({ uuid: UUID.transform((u) => u.toLowerCase()) }), result: z.object({ uuid: z.string(), released: z.number().int() }) },
  /** Every agent step answers with its VM as it is now; prepare adds where to send the state. */
  migration: { params: MigrationStepParamsSchema, result: z.object({ vm: VmInfoSchema.nullable(), incoming: z.string().optional() }) },
} as const;
export type VmCommand = keyof typeof VM_COMMANDS;
export type VmCommandResult<C extends VmCommand> = z.infer<(typeof VM_COMMANDS)[C]['result']>;
