import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { pidAlive, waitFor } from '../support/index.js';

const TEMP_DIR = new URL('../dist/support/temp-dir.js', import.meta.url).href;
const AGENT = new URL('../../packages/agent/dist/index.js', import.meta.url).href;

/**
 * A stand-in for an interrupted test run: its main process keeps the registry and, like vitest,
 * exits from its SIGTERM handler without any teardown; a directory made meanwhile holds a sim VM,
 * which its agent would have started detached, so it outlives whoever started it.
 */
const RUN = `
import { join } from 'node:path';
import { makeTempDir, tempRegistry } from '${TEMP_DIR}';
import { SimDriver } from '${AGENT}';
tempRegistry();
process.on('SIGTERM', () => process.exit(143));
const dir = await makeTempDir('registry');
const driver = new SimDriver(dir, 'host-a', 10);
const vm = await driver.create({ uuid: crypto.randomUUID(), name: 'left', disks: [{ path: join(dir, 'left.img'), mode: 'exclusive' }], onLeaseLoss: { policy: 'kill' } });
console.log(JSON.stringify({ dir, pid: vm.pid }));
setInterval(() => {}, 1_000);
`;

describe('the test run’s temp registry (test/support/temp-dir.ts, vitest globalSetup)', () => {
  it('an interrupted run leaves no directory and no sim VM behind', async () => {
    const run = spawn(process.execPath, ['--input-type=module', '-e', RUN], { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    run.stdout.setEncoding('utf8').on('data', (t: string) => (stdout += t));
    const exited = new Promise<number | null>((resolve) => run.once('exit', (code) => resolve(code)));
    let made: { dir: string; pid: number } | undefined;
    try {
      made = await waitFor(() => (stdout.includes('\n') ? (JSON.parse(stdout) as { dir: string; pid: number }) : false), { what: 'the VM to run', deadlineMs: 20_000, intervalMs: 10 });
      expect(pidAlive(made.pid)).toBe(true);
      run.kill('SIGTERM');
      expect(await waitFor(() => exited, { what: 'the run to exit', deadlineMs: 10_000 })).toBe(143);
      expect(existsSync(made.dir)).toBe(false);
      await waitFor(() => !pidAlive(made!.pid), { what: 'the orphaned VM to exit', deadlineMs: 10_000, intervalMs: 50 });
    } finally {
      run.kill('SIGKILL');
      if (made !== undefined && pidAlive(made.pid)) process.kill(made.pid, 'SIGKILL');
    }
  });
});
