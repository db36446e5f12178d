import { fileURLToPath } from 'node:url';

/** The lock-probe program (see lock-probe.ts), for tests and the demo to spawn with `node`. */
export const LOCK_PROBE_ENTRY = fileURLToPath(new URL('./lock-probe.js', import.meta.url));
