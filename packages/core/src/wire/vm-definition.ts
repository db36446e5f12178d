import { z } from 'zod';
import { LOCK_MODES } from '../model.js';
import { MAX_RESOURCES_PER_REQUEST } from './agent-api.js';
import { LeaseLossSchema } from './cluster.js';

/**
 * What of a VM's definition locking depends on (a libvirt domain definition, reduced): its disks
 * and what its host does to it on a lost lease. A VM is started with one (wire/vm-api.ts), and a
 * change to it while the VM migrates is staged in the migration's record (migration/record.ts),
 * which is why it lives apart from both.
 */

export const VmDiskSchema = z.strictObject({
  path: z.string().startsWith('/', 'must be an absolute path').max(4096),
  mode: z.enum(LOCK_MODES).default('exclusive'),
  /** The agent's default lockspace when unset. */
  lockspace: z.string().min(1).max(64).optional(),
});
export type VmDisk = z.infer<typeof VmDiskSchema>;

/** The whole definition: a change replaces it (every disk the VM keeps is named again). */
export const VmDefinitionSchema = z.strictObject({
  disks: z.array(VmDiskSchema).min(1).max(MAX_RESOURCES_PER_REQUEST),
  onLeaseLoss: LeaseLossSchema.prefault({}),
});
export type VmDefinition = z.infer<typeof VmDefinitionSchema>;
export type VmDefinitionInput = z.input<typeof VmDefinitionSchema>;
