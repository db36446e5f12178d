import { z } from 'zod';

/**
 * The lock model shared by every process: who holds (owners), what is held (resources), how
 * (modes), and the decision a lock table makes when an acquire arrives.
 */

export const LOCK_MODES = ['exclusive', 'shared'] as const;
export type LockMode = (typeof LOCK_MODES)[number];

const UUID_PATTERN = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;

/**
 * A uuid in its one spelling (lower case, dashed), as libvirt prints one whichever way it was
 * given: `ABCD…` and `abcd…` without dashes name the same VM, so they must be the same owner. A
 * string that is no uuid (a VM's name, where either may be given) is returned as it is.
 */
export function canonicalUuid(s: string): string {
  if (!UUID_PATTERN.test(s)) return s;
  const hex = s.replaceAll('-', '').toLowerCase();
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A uuid, with or without dashes, in either case; parsed into its canonical spelling. */
export const UUID = z.string().regex(UUID_PATTERN, 'a UUID').transform(canonicalUuid);

/**
 * A lock owner, as virtlockd registers one: a VM's uuid and name, the hypervisor's numeric id,
 * and the pid of the process that holds its disks open.
 */
export const OwnerSchema = z.strictObject({
  uuid: UUID,
  name: z.string().min(1).max(256),
  id: z.number().int().nonnegative().optional(),
  pid: z.number().int().positive().optional(),
});
export type Owner = z.infer<typeof OwnerSchema>;

/**
 * How the agent learns that an owner is gone.
 * - `connection`: when the registering connection closes (the VM process holds it, as QEMU holds
 *   virtlockd's socket). If the owner's process still runs at that moment, it is killed first.
 * - `pid`: when the owner's process (pid + start time) exits; connections may come and go, which
 *   suits short-lived clients such as a libvirt hook.
 */
export const LIVENESS = ['connection', 'pid'] as const;
export type Liveness = (typeof LIVENESS)[number];

/** Longest resource name and lockspace name a request may carry (the agent's hand-checked requests use them too). */
export const MAX_RESOURCE_NAME = 4096;
export const MAX_LOCKSPACE_NAME = 64;

/** A resource as a client names it: a path or name, in a lockspace (the agent's default if omitted). */
export const ResourceRefSchema = z.strictObject({
  // No path can hold a NUL byte: refused here rather than by the file system's call.
  name: z.string().min(1).max(MAX_RESOURCE_NAME).refine((n) => !n.includes('\0'), 'a resource name holds no NUL byte'),
  lockspace: z.string().min(1).max(MAX_LOCKSPACE_NAME).optional(),
  mode: z.enum(LOCK_MODES).default('exclusive'),
});
export type ResourceRef = z.infer<typeof ResourceRefSchema>;

/** What a lock table knows of a resource that is held (any keyed collection of owners will do). */
export interface HeldState {
  mode: LockMode;
  owners: { has(owner: string): boolean };
}

export type AcquireDecision =
  | { kind: 'lock' }
  | { kind: 'join' }
  | { kind: 'busy'; reason: 'held-exclusive' | 'held-shared' | 'already-owner' };

/**
 * seed 000's rule: a resource already held in this process is never opened or locked again.
 * A shared request joins a shared holding; anything else (even the same owner asking twice) is busy.
 */
export function decideAcquire(held: HeldState | undefined, mode: LockMode, owner: string): AcquireDecision {
  if (held === undefined) return { kind: 'lock' };
  if (held.owners.has(owner)) return { kind: 'busy', reason: 'already-owner' };
  if (held.mode === 'shared' && mode === 'shared') return { kind: 'join' };
  return { kind: 'busy', reason: held.mode === 'exclusive' ? 'held-exclusive' : 'held-shared' };
}
