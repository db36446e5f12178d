import { join } from 'node:path';

/**
 * Where the sim hypervisor keeps its VMs under a host's state directory: one directory per VM
 * (`vms/<uuid>/`, with its sockets and pid file) and its event logs beside them (`vm-logs/`).
 * Kept apart from the driver so the configuration can check the socket paths without loading it.
 */
export const SIM_VMS_DIR = 'vms';
export const SIM_LOGS_DIR = 'vm-logs';
export const CONTROL_SOCKET = 'control.sock';
export const INCOMING_SOCKET = 'incoming.sock';

/** The longest socket path the sim driver makes under a state directory (a VM's incoming socket). */
export function longestSimSocketPath(stateDir: string): string {
  return join(stateDir, SIM_VMS_DIR, '00000000-0000-0000-0000-000000000000', INCOMING_SOCKET);
}
