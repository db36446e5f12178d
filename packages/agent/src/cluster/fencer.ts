import { spawn } from 'node:child_process';
import type { Logger } from '../logger.js';
import type { OwnerRecord } from '../owners/owner-registry.js';
import { isProcessAlive, signalProcess } from '../sys/index.js';

export interface FencerOptions {
  log: Logger;
  /** SIGTERM → SIGKILL grace: inside the margin, so the kill lands before etcd could free the leases. */
  killGraceMs: number;
}

/**
 * Applies an owner's lease-loss policy when the host can no longer prove it holds the owner's
 * leases (sanlock's kill/killpath, libvirt's on_lockfailure). Every path ends with the owner
 * stopped before the margin is gone: paused (SIGSTOP, resumable), or killed.
 */
export class Fencer {
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly opts: FencerOptions) {}

  fence(record: OwnerRecord): void {
    const { owner, onLeaseLoss } = record;
    const pid = owner.pid;
    if (pid === undefined || record.startTime === undefined || !isProcessAlive(pid, record.startTime)) return;
    this.opts.log.error({ owner, policy: onLeaseLoss.policy }, `fencing ${owner.name}: ${onLeaseLoss.policy}`);
    switch (onLeaseLoss.policy) {
      case 'pause':
        signalProcess(pid, 'SIGSTOP');
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

  /** A paused owner whose leases came back with new tokens. */
  resume(record: OwnerRecord): void {
    if (record.owner.pid !== undefined) signalProcess(record.owner.pid, 'SIGCONT');
  }

  private killLater(record: OwnerRecord): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (record.owner.pid !== undefined && record.startTime !== undefined && isProcessAlive(record.owner.pid, record.startTime)) signalProcess(record.owner.pid, 'SIGKILL');
    }, this.opts.killGraceMs);
    this.timers.add(t);
  }

  close(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
