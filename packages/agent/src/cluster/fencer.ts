import { spawn } from 'node:child_process';
import type { Grant } from '@baton/core';
import type { HypervisorDriver } from '../hypervisor/driver.js';
import type { Logger } from '../logger.js';
import type { OwnerRecord } from '../owners/owner-registry.js';
import { isProcessAlive, signalProcess } from '../sys/index.js';

export interface FencerOptions {
  log: Logger;
  /** SIGTERM → SIGKILL grace: inside the margin, so the kill lands before etcd could free the leases. */
  killGraceMs: number;
  /** The VMs this host's hypervisor driver runs, paused through it (`driverPauses`). */
  vms?: VmPauses;
}

/** Pausing and resuming a VM through its hypervisor, for the `pause` policy. */
export interface VmPauses {
  /** Pause the VM if the driver runs it and it is running: true if this call paused it. */
  pause(uuid: string): Promise<boolean>;
  /** Unpause a VM `pause` paused, under the grants its owner holds now. */
  resume(uuid: string): Promise<void>;
}

/** VmPauses through a hypervisor driver, the VM resumed under `grantsOf` until `validUntil()`. */
export function driverPauses(driver: Pick<HypervisorDriver, 'find' | 'pause' | 'resume'>, grantsOf: (uuid: string) => Grant[], validUntil: () => number | null): VmPauses {
  return {
    async pause(uuid) {
      // Only a running VM: one paused already (a migration's switchover) is not the fence's to resume.
      if ((await driver.find(uuid))?.state !== 'running') return false;
      await driver.pause(uuid);
      return true;
    },
    async resume(uuid) {
      await driver.resume(uuid, grantsOf(uuid), validUntil());
    },
  };
}

/**
 * Applies an owner's lease-loss policy when the host can no longer prove it holds the owner's
 * leases (sanlock's kill/killpath, libvirt's on_lockfailure). Every path ends with the owner
 * stopped before the margin is gone: paused, or killed. A VM the hypervisor driver runs is paused
 * through it, as libvirt suspends a domain (QEMU's `stop` drains the I/O in flight before it
 * answers, which a stopped process does not); any other owner, or a VM whose pause is not
 * confirmed within the grace, is stopped with SIGSTOP. Both are undone by `resume`.
 */
export class Fencer {
  private readonly timers = new Set<NodeJS.Timeout>();
  /** VMs the fence paused through the driver: only those are unpaused by it. */
  private readonly pausedVms = new Set<string>();

  constructor(private readonly opts: FencerOptions) {}

  fence(record: OwnerRecord): void {
    const { owner, onLeaseLoss } = record;
    const pid = alivePid(record);
    if (pid === undefined) return;
    this.opts.log.error({ owner, policy: onLeaseLoss.policy }, `fencing ${owner.name}: ${onLeaseLoss.policy}`);
    switch (onLeaseLoss.policy) {
      case 'pause':
        if (this.opts.vms) this.pauseVm(record, this.opts.vms);
        else signalProcess(pid, 'SIGSTOP');
        return;
      case 'killpath': {
        const [cmd, ...args] = onLeaseLoss.killpath!;
        const child = spawn(cmd!, [...args, owner.uuid, String(pid)], { stdio: 'ignore', detached: false });
        child.on('error', (err) => this.opts.log.error({ err: err.message, owner: owner.uuid }, 'killpath failed to start; SIGKILL follows at the grace deadline'));
        this.killLater(record);
        return;
      }
      case 'kill':
        signalProcess(pid, 'SIGTERM');
        this.killLater(record);
        return;
    }
  }

  /** The driver has until the kill grace to confirm the pause; otherwise the process is stopped. */
  private pauseVm(record: OwnerRecord, vms: VmPauses): void {
    const { owner } = record;
    // Whichever comes first, the driver's answer or the grace, decides; the other does nothing.
    let decided = false;
    const decide = (): boolean => {
      if (decided) return false;
      decided = true;
      clearTimeout(late);
      this.timers.delete(late);
      return true;
    };
    const stop = (why: string): void => {
      if (!decide()) return;
      this.opts.log.error({ owner, why }, `pausing ${owner.name} with SIGSTOP: ${why}`);
      const pid = alivePid(record);
      if (pid !== undefined) signalProcess(pid, 'SIGSTOP');
    };
    const late = setTimeout(() => stop('its hypervisor did not confirm the pause in time'), this.opts.killGraceMs);
    this.timers.add(late);
    void vms.pause(owner.uuid).then(
      (paused) => {
        if (!paused) return stop('its hypervisor does not run it');
        if (!decide()) return;
        this.pausedVms.add(owner.uuid);
        this.opts.log.error({ owner }, `paused ${owner.name} through its hypervisor`);
      },
      (err: unknown) => stop(`its hypervisor could not pause it (${(err as Error).message})`),
    );
  }

  /** A paused owner whose leases came back with new tokens: continued, and unpaused if the fence paused it through the driver. */
  async resume(record: OwnerRecord): Promise<void> {
    if (record.owner.pid !== undefined) signalProcess(record.owner.pid, 'SIGCONT');
    if (this.pausedVms.delete(record.owner.uuid)) await this.opts.vms?.resume(record.owner.uuid);
  }

  private killLater(record: OwnerRecord): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      const pid = alivePid(record);
      if (pid !== undefined) signalProcess(pid, 'SIGKILL');
    }, this.opts.killGraceMs);
    this.timers.add(t);
  }

  close(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}

/** The owner's pid while that process (pid and start time) still runs; undefined otherwise. */
function alivePid(record: OwnerRecord): number | undefined {
  const { pid } = record.owner;
  return pid !== undefined && record.startTime !== undefined && isProcessAlive(pid, record.startTime) ? pid : undefined;
}
