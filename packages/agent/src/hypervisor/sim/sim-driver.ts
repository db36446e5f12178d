import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatonError, type Grant } from '@baton/core';
import type { VmInfo, VmSpec } from '@baton/core';
import type { HypervisorDriver, SendOptions } from '../driver.js';
import { controlRequest } from './control.js';

export const MANAGED_VM_ENTRY = fileURLToPath(new URL('./managed-vm-main.js', import.meta.url));

const CONTROL_TIMEOUT_MS = 5_000;

/**
 * The `sim` hypervisor: each VM a real process (managed-vm-main), detached from the agent so it
 * survives the agent's re-exec and crash, found again by its directory under `<stateDir>/vms/`.
 */
export class SimDriver implements HypervisorDriver {
  private readonly root: string;

  constructor(
    stateDir: string,
    private readonly host: string,
    private readonly intervalMs = 20,
  ) {
    this.root = join(stateDir, 'vms');
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
  }

  private dir(uuid: string): string {
    return join(this.root, uuid);
  }

  private control(uuid: string, req: Record<string, unknown>, timeoutMs = CONTROL_TIMEOUT_MS): Promise<unknown> {
    return controlRequest(join(this.dir(uuid), 'control.sock'), req, timeoutMs);
  }

  private async spawnVm(spec: VmSpec, incoming: boolean): Promise<VmInfo> {
    const dir = this.dir(spec.uuid);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const log = openSync(join(dir, 'events.log'), 'a');
    try {
      const child = spawn(
        process.execPath,
        [MANAGED_VM_ENTRY, '--dir', dir, '--uuid', spec.uuid, '--name', spec.name, '--host', this.host, '--interval-ms', String(this.intervalMs), ...(incoming ? ['--incoming'] : [])],
        { detached: true, stdio: ['ignore', log, log] },
      );
      child.unref();
    } finally {
      closeSync(log);
    }
    // Up once its control socket answers.
    for (let i = 0; ; i++) {
      try {
        return (await this.control(spec.uuid, { op: 'status' }, 500)) as VmInfo;
      } catch (err) {
        if (i >= 100) throw new BatonError('UNAVAILABLE', `sim VM ${spec.name} did not start`, { cause: err });
        await new Promise<void>((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  async createIncoming(spec: VmSpec): Promise<{ vm: VmInfo; incoming: string }> {
    const existing = await this.find(spec.uuid);
    // Idempotent: a repeated prepare finds the incoming VM it created.
    const vm = existing ?? (await this.spawnVm(spec, true));
    return { vm, incoming: join(this.dir(spec.uuid), 'incoming.sock') };
  }

  async create(spec: VmSpec): Promise<VmInfo> {
    return (await this.find(spec.uuid)) ?? this.spawnVm(spec, false);
  }

  async send(uuid: string, incoming: string, opts: SendOptions = {}): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'send', to: incoming, ...opts }, CONTROL_TIMEOUT_MS + (opts.delayMs ?? 0))) as VmInfo;
  }

  /** Faults for the VM's coming sends: the next `failSends` fail, each is delayed `sendDelayMs`. */
  async inject(uuid: string, faults: { failSends?: number; sendDelayMs?: number }): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'inject', ...faults })) as VmInfo;
  }

  async pause(uuid: string): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'pause' })) as VmInfo;
  }

  async resume(uuid: string, grants: readonly Grant[], validUntil: number | null): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'resume', grants, validUntil })) as VmInfo;
  }

  async renew(uuid: string, validUntil: number | null): Promise<void> {
    await this.control(uuid, { op: 'renew', validUntil });
  }

  async destroy(uuid: string): Promise<void> {
    if (await this.find(uuid)) await this.control(uuid, { op: 'destroy' }).catch(() => undefined);
    rmSync(this.dir(uuid), { recursive: true, force: true });
  }

  async find(uuid: string): Promise<VmInfo | undefined> {
    try {
      return (await this.control(uuid, { op: 'status' }, 1_000)) as VmInfo;
    } catch {
      return undefined;
    }
  }

  async list(): Promise<VmInfo[]> {
    const found = await Promise.all(readdirSync(this.root).map((uuid) => this.find(uuid)));
    return found.filter((v): v is VmInfo => v !== undefined);
  }
}
