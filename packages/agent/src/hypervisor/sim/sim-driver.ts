import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, linkSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatonError, type Grant } from '@baton/core';
import { reapChild } from '../../sys/binding.js';
import { isProcessAlive, processStartTime, signalProcess } from '../../sys/proc.js';
import type { VmInfo, VmSpec } from '@baton/core';
import type { HypervisorDriver, SendOptions } from '../driver.js';
import { ControlChannel, isDropped } from './control.js';
import { CONTROL_SOCKET, INCOMING_SOCKET, SIM_LOGS_DIR, SIM_VMS_DIR } from './layout.js';

export const MANAGED_VM_ENTRY = fileURLToPath(new URL('./managed-vm-main.js', import.meta.url));

const CONTROL_TIMEOUT_MS = 5_000;
/** How long a new VM process may take to answer on its control socket (node start-up, on a loaded host). */
const START_TIMEOUT_MS = 15_000;
/** A send takes as long as the guest's memory takes to copy (an injected delay included): the caller's deadline governs. */
const SEND_TIMEOUT_MS = 120_000;
/** How long a destroyed VM may take to exit (it exits right after answering) before it is killed. */
const DESTROY_EXIT_MS = 2_000;

interface ProcessId {
  pid: number;
  start: number;
}

/**
 * A VM process seen to have ended is waited for, in case an earlier image of this agent spawned it
 * (Node reaps only the children it spawned itself): it would stay a zombie otherwise. True once
 * nothing is left to reap.
 */
function reaped(pid: number): boolean {
  return reapChild(pid) !== 'running';
}

/**
 * Whether the process has gone within `ms`, and been reaped if it was this process's child
 * (polled: it is not a child Node knows after a re-exec, and a Node process shows as a zombie a
 * moment before it can be reaped, while its other threads exit).
 */
async function exited(p: ProcessId, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (isProcessAlive(p.pid, p.start) || !reaped(p.pid)) {
    if (performance.now() >= deadline) return !isProcessAlive(p.pid, p.start);
    await new Promise<void>((resolve) => setTimeout(resolve, 5));
  }
  return true;
}

/** Faults a sim VM takes for its coming operations (tests and the demo inject them). */
export interface SimFaults {
  /** The next this many sends fail (IO_ERROR); the VM runs on at its source. */
  failSends?: number;
  /** Each send is this much slower. */
  sendDelayMs?: number;
  /** The next this many unpauses fail (IO_ERROR); the VM stays paused. */
  failResumes?: number;
}

/**
 * The `sim` hypervisor: each VM a real process (managed-vm-main), detached from the agent so it
 * survives the agent's re-exec and crash, found again by its directory under `<stateDir>/vms/`.
 *
 * A VM's events go to `<stateDir>/vm-logs/<uuid>.log`, outside its directory, so they outlive
 * `destroy` (a migration's source copy is destroyed at confirm, and its `paused` event is what
 * the handoff is measured from); each life of the VM on this host appends to the same file, as
 * libvirt's per-domain QEMU log does. `vms/<uuid>/events.log` is a hard link to it while the VM's
 * directory exists.
 */
export class SimDriver implements HypervisorDriver {
  private readonly root: string;
  private readonly logs: string;
  /** One control connection per VM, kept open (QMP-style). */
  private readonly channels = new Map<string, ControlChannel>();

  constructor(
    stateDir: string,
    private readonly host: string,
    private readonly intervalMs = 20,
  ) {
    this.root = join(stateDir, SIM_VMS_DIR);
    this.logs = join(stateDir, SIM_LOGS_DIR);
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    mkdirSync(this.logs, { recursive: true, mode: 0o700 });
  }

  /** The VM's event log on this host, every life of it appended: kept after `destroy`. */
  eventLog(uuid: string): string {
    return join(this.logs, `${uuid}.log`);
  }

  private dir(uuid: string): string {
    return join(this.root, uuid);
  }

  private control(uuid: string, req: Record<string, unknown>, timeoutMs = CONTROL_TIMEOUT_MS): Promise<unknown> {
    let channel = this.channels.get(uuid);
    if (channel === undefined) {
      channel = new ControlChannel(join(this.dir(uuid), CONTROL_SOCKET));
      this.channels.set(uuid, channel);
    }
    return channel.request(req, timeoutMs);
  }

  private async spawnVm(spec: VmSpec, incoming: boolean): Promise<VmInfo> {
    const dir = this.dir(spec.uuid);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const logPath = this.eventLog(spec.uuid);
    const log = openSync(logPath, 'a', 0o600);
    try {
      linkSync(logPath, join(dir, 'events.log'));
    } catch (err) {
      // A directory left by a VM process that died keeps its link: the same file.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        closeSync(log);
        throw err;
      }
    }
    let pid: number;
    try {
      const child = spawn(
        process.execPath,
        [MANAGED_VM_ENTRY, '--dir', dir, '--uuid', spec.uuid, '--name', spec.name, '--host', this.host, '--interval-ms', String(this.intervalMs), ...(incoming ? ['--incoming'] : [])],
        { detached: true, stdio: ['ignore', log, log] },
      );
      child.unref();
      pid = child.pid!;
    } finally {
      closeSync(log);
    }
    // Recorded before anything can ask again: a VM still booting is "starting", never "absent".
    writeFileSync(join(dir, 'pid'), `${pid} ${processStartTime(pid) ?? 0}\n`);
    return this.whenUp(spec.uuid);
  }

  /** Up once its control socket answers; a VM that does not come up in time is killed, not left booting. */
  private async whenUp(uuid: string): Promise<VmInfo> {
    const deadline = performance.now() + START_TIMEOUT_MS;
    for (;;) {
      try {
        return (await this.control(uuid, { op: 'status' }, 500)) as VmInfo;
      } catch (err) {
        if (performance.now() >= deadline) {
          const starting = this.startingPid(uuid);
          if (starting !== undefined) signalProcess(starting, 'SIGKILL');
          throw new BatonError('UNAVAILABLE', `sim VM ${uuid} did not start within ${START_TIMEOUT_MS} ms`, { cause: err });
        }
        await new Promise<void>((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  /** The VM's process as its pid file names it (pid and start time), if it still runs; one that has ended is reaped. */
  private pidFile(uuid: string): ProcessId | undefined {
    let text: string;
    try {
      text = readFileSync(join(this.dir(uuid), 'pid'), 'utf8');
    } catch {
      return undefined;
    }
    const [pid, start] = text.trim().split(' ').map(Number);
    if (pid === undefined || start === undefined) return undefined;
    if (isProcessAlive(pid, start)) return { pid, start };
    reaped(pid);
    return undefined;
  }

  /** The pid of the VM's process if it still runs, whether or not it answers yet. */
  private startingPid(uuid: string): number | undefined {
    return this.pidFile(uuid)?.pid;
  }

  async createIncoming(spec: VmSpec): Promise<{ vm: VmInfo; incoming: string }> {
    const existing = await this.find(spec.uuid);
    // Idempotent: a repeated prepare finds the incoming VM it created.
    const vm = existing ?? (await this.spawnVm(spec, true));
    return { vm, incoming: join(this.dir(spec.uuid), INCOMING_SOCKET) };
  }

  async create(spec: VmSpec): Promise<VmInfo> {
    return (await this.find(spec.uuid)) ?? this.spawnVm(spec, false);
  }

  async send(uuid: string, incoming: string, opts: SendOptions = {}): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'send', to: incoming, ...opts }, SEND_TIMEOUT_MS + (opts.delayMs ?? 0))) as VmInfo;
  }

  /** Faults for the VM's coming operations, replacing any injected before. */
  async inject(uuid: string, faults: SimFaults): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'inject', ...faults })) as VmInfo;
  }

  async pause(uuid: string): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'pause' })) as VmInfo;
  }

  async resume(uuid: string, grants: readonly Grant[], validUntil: number | null): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'resume', grants, validUntil })) as VmInfo;
  }

  async regrant(uuid: string, grants: readonly Grant[]): Promise<VmInfo> {
    return (await this.control(uuid, { op: 'regrant', grants })) as VmInfo;
  }

  async renew(uuid: string, validUntil: number | null): Promise<void> {
    await this.control(uuid, { op: 'renew', validUntil });
  }

  /**
   * libvirt's destroy: the VM is gone when this returns, whether or not it answers. Asked first
   * (it logs and exits); killed by pid when it did not take the request (stopped, hung) or has
   * not exited soon after, rather than left running without a directory where nothing would
   * find it again.
   */
  async destroy(uuid: string): Promise<void> {
    const pidFile = this.pidFile(uuid);
    const asked = await this.find(uuid).then(
      async (vm) => vm !== undefined && (await this.control(uuid, { op: 'destroy' }).then(() => true, () => false)),
      () => false,
    );
    if (pidFile !== undefined && !(asked && (await exited(pidFile, DESTROY_EXIT_MS)))) {
      signalProcess(pidFile.pid, 'SIGKILL');
      await exited(pidFile, DESTROY_EXIT_MS);
    }
    this.channels.get(uuid)?.close();
    this.channels.delete(uuid);
    rmSync(this.dir(uuid), { recursive: true, force: true });
  }

  /**
   * Undefined only when there is provably no VM: no control socket, or nobody listening on it. A
   * VM that is there but slow (stopped, overloaded) is UNAVAILABLE: taking it for absent would let
   * a migration record `done` over a live copy, or start a second process for the same VM.
   */
  async find(uuid: string): Promise<VmInfo | undefined> {
    try {
      return await this.status(uuid);
    } catch (err) {
      const errno = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if (errno !== 'ENOENT' && errno !== 'ECONNREFUSED') throw err;
      // No socket yet, but the process runs: it is starting; wait for it rather than start another.
      if (this.startingPid(uuid) !== undefined) return this.whenUp(uuid);
      return undefined;
    }
  }

  /**
   * A connection that drops before the answer (the VM exited since the channel's last request, or
   * while answering) proves nothing either way: ask once more, on a new connection, which tells.
   */
  private async status(uuid: string): Promise<VmInfo> {
    try {
      return (await this.control(uuid, { op: 'status' }, 1_000)) as VmInfo;
    } catch (err) {
      if (!isDropped(err)) throw err;
      return (await this.control(uuid, { op: 'status' }, 1_000)) as VmInfo;
    }
  }

  /** Idempotent: the control connections close; the VMs run on (they outlive their driver). */
  close(): void {
    for (const channel of this.channels.values()) channel.close();
    this.channels.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Every VM with a directory on this host destroyed, answering or not: a clean-up of
   * everything (`list` leaves out a VM too slow to answer). The first failure is thrown once
   * every VM has been tried.
   */
  async destroyAll(): Promise<void> {
    const failures: unknown[] = [];
    for (const uuid of readdirSync(this.root)) await this.destroy(uuid).catch((err: unknown) => failures.push(err));
    if (failures.length > 0) throw failures[0];
  }

  async list(): Promise<VmInfo[]> {
    // A VM too slow to answer now is left out of the list rather than failing it.
    const found = (await Promise.allSettled(readdirSync(this.root).map((uuid) => this.find(uuid)))).map((r) => (r.status === 'fulfilled' ? r.value : undefined));
    return found.filter((v): v is VmInfo => v !== undefined);
  }
}
