import { tempRegistry } from './temp-dir.js';

/** vitest's globalSetup: every directory the run makes is removed when it ends, interrupted or not. */
export default function setup(): () => void {
  return tempRegistry();
}
