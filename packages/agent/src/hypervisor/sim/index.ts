import { fileURLToPath } from 'node:url';

/** The sim VM's program, for launchers (the demo, tests) to spawn with `node`. */
export const SIM_VM_ENTRY = fileURLToPath(new URL('./vm-main.js', import.meta.url));
export { MANAGED_VM_ENTRY, SimDriver, type SimFaults } from './sim-driver.js';
export { longestSimSocketPath } from './layout.js';
export { FencedDisk } from './fenced-disk.js';
export { diskEpochs, formatDiskRecord, readDiskRecords, type DiskEpoch, type DiskRecord } from './disk-records.js';
