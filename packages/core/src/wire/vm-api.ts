import { z } from 'zod';
import { UUID } from '../model.js';
import { MIGRATION_STEPS } from '../migration/phases.js';
import { MigrationRecordSchema } from '../migration/record.js';
import { GrantSchema } from './agent-api.js';
import { LeaseLossSchema } from './cluster.js';
import { VmDefinitionSchema } from './vm-definition.js';

/**
 * The agent's commands over NATS (`baton.<cluster>.agent.<host>.<verb>`): the VMs its hypervisor
 * driver runs, and the agent's steps of a migration. Same envelope and error codes as the socket.
 */

export const VM_STATES = ['incoming', 'paused', 'running'] as const;
export type VmState = (typeof VM_STATES)[number];

/** What it takes to start a VM: who it is, and its definition. */
export const VmSpecSchema = z.strictObject({
  uuid: UUID,
  name: z.string().min(1).max(256),
  ...VmDefinitionSchema.shape,
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
  /**
   * Whether this copy has ever run: false for one created to receive a migration and never
   * unpaused (QEMU started with `-incoming`; libvirt's `paused (migration)`); absent when the
   * driver cannot tell.
   */
  ran: z.boolean().optional(),
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
  'vm.destroy': { params: z.strictObject({ uuid: UUID }), result: z.object({ uuid: z.string(), released: z.number().int() }) },
  /** Replace a VM's definition (disks, lease-loss policy), in its turn after the VM's other commands; refused (MIGRATING) while it migrates. */
  'vm.define': { params: z.strictObject({ uuid: UUID, definition: VmDefinitionSchema }), result: HostedVmSchema },
  /** Every agent step answers with its VM as it is now; prepare adds where to send the state. */
  migration: { params: MigrationStepParamsSchema, result: z.object({ vm: VmInfoSchema.nullable(), incoming: z.string().optional(), onLeaseLoss: LeaseLossSchema.optional() }) },
} as const;
export type VmCommand = keyof typeof VM_COMMANDS;

/** The coordinator's answers over HTTP: a VM destroyed (on the host that ran it); a definition change applied now, or staged in the VM's migration (applied when that ends). */
export const DestroyedVmSchema = VM_COMMANDS['vm.destroy'].result.extend({ host: z.string() });
export type DestroyedVm = z.infer<typeof DestroyedVmSchema>;
export const DefineAnswerSchema = z.union([z.strictObject({ applied: z.literal(true), vm: HostedVmSchema }), z.strictObject({ staged: z.literal(true), migration: z.string() })]);
export type DefineAnswer = z.infer<typeof DefineAnswerSchema>;
export type VmCommandResult<C extends VmCommand> = z.infer<(typeof VM_COMMANDS)[C]['result']>;
