import type { Grant, VmInfo, VmSpec } from '@baton/core';

/** Fault injection for a send (the sim driver honours it; tests use it). */
export interface SendOptions {
  delayMs?: number;
  fail?: boolean;
}

/**
 * What the agent asks of a hypervisor. Shaped after what libvirt offers, so a libvirt driver fits
 * later: create an incoming domain paused (`virsh migrate --live --suspend` leaves the destination
 * paused until the lease is committed), send (migrate), pause (suspend), resume, destroy, list,
 * and disk hot-plug (attach-device / detach-device) for a definition change.
 */
export interface HypervisorDriver extends Disposable {
  /** A VM created paused and waiting for its state; `incoming` is where the source sends it. */
  createIncoming(spec: VmSpec): Promise<{ vm: VmInfo; incoming: string }>;
  /** A new VM, paused, with a fresh guest (no incoming state). */
  create(spec: VmSpec): Promise<VmInfo>;
  /** Live-migrate: send the state; the VM is paused at switchover and stays paused on success. */
  send(uuid: string, incoming: string, opts?: SendOptions): Promise<VmInfo>;
  pause(uuid: string): Promise<VmInfo>;
  /** Unpause with the grants (tokens) the VM writes under, valid until `validUntil` (host monotonic ms, null: no deadline). */
  resume(uuid: string, grants: readonly Grant[], validUntil: number | null): Promise<VmInfo>;
  /**
   * Hot-plug and unplug disks: from its answer on, the VM (running or paused) writes exactly the
   * disks of `grants`, under their tokens. Added disks are locked before, removed ones released after.
   */
  regrant(uuid: string, grants: readonly Grant[]): Promise<VmInfo>;
  /** Extend the write deadline of a running VM (after each keepalive). */
  renew(uuid: string, validUntil: number | null): Promise<void>;
  destroy(uuid: string): Promise<void>;
  /** The VM, if this host's hypervisor has a copy of it. */
  find(uuid: string): Promise<VmInfo | undefined>;
  list(): Promise<VmInfo[]>;
  /** Let go of the hypervisor connections (the agent stops or re-executes); the VMs run on. */
  close(): void;
}
