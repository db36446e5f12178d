import { join } from 'node:path';
import { z } from 'zod';
import { LeaseLossSchema, type LeaseLoss } from '@baton/core';
import { writeFileAtomic } from './atomic-file.js';
import { readHostFile } from './host-file.js';

const PolicyFileSchema = z.object({ v: z.literal(1), host: z.string(), vms: z.record(z.string(), LeaseLossSchema) });

/**
 * The lease-loss policies definitions gave this host's VMs, kept in the state dir. The leases in
 * etcd name the policy they were granted with (rewriting them would change their tokens), so an
 * agent restarted after a crash re-adopts a redefined VM with the policy kept here instead.
 */
export class PolicyFile {
  private readonly path: string;
  private readonly vms: Map<string, LeaseLoss>;

  /** Reads the file; a problem with it (said through `onProblem`) leaves it empty. */
  constructor(
    stateDir: string,
    private readonly host: string,
    onProblem: (problem: string) => void,
  ) {
    this.path = join(stateDir, 'policies.json');
    const { value, problem } = readHostFile(this.path, PolicyFileSchema, host);
    if (problem !== undefined) onProblem(problem);
    this.vms = new Map(Object.entries(value?.vms ?? {}));
  }

  get(uuid: string): LeaseLoss | undefined {
    return this.vms.get(uuid);
  }

  set(uuid: string, policy: LeaseLoss): void {
    this.vms.set(uuid, policy);
    this.save();
  }

  delete(uuid: string): void {
    if (this.vms.delete(uuid)) this.save();
  }

  private save(): void {
    writeFileAtomic(this.path, JSON.stringify({ v: 1, host: this.host, vms: Object.fromEntries(this.vms) }) + '\n');
  }
}
