import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { runCli } from '../support/agent-io.js';
import { CLI_ENTRY, processesMentioning, waitFor } from '../support/index.js';

/**
 * `npm run demo` is the first thing an operator runs: both stories run end to end here, as the
 * CLI runs them, and remove their working directory when they have finished.
 */
const workingDirectory = (stdout: string): string => /Working directory (\S+)/.exec(stdout)![1]!;

describe('baton demo', () => {
  it('--local: one agent, a disk refused to a second VM, upgrades that keep the lock, a dead VM’s lock released to the next with a higher token', async () => {
    // runCli's deadline before the test's: a demo that hangs is killed and its output shown.
    const run = await runCli(['demo', '--local', '--reexecs', '3'], { deadlineMs: 50_000 });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/refused: RESOURCE_BUSY/);
    expect(run.stdout).toMatch(/re-exec 3: same pid \d+, generation 3/);
    expect(run.stdout).toMatch(/tried to take the lock \d+ times during the upgrades: granted 0 times/);
    expect(run.stdout).toMatch(/running: token 2 \(was 1\)/);
    expect(run.stdout).toContain('demo finished');
    expect(existsSync(workingDirectory(run.stdout))).toBe(false);
  });

  it('refuses a re-exec count that is not a whole number, before starting anything', async () => {
    const run = await runCli(['demo', '--local', '--reexecs', 'many']);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/--reexecs.*a whole number/);
    expect(run.stdout).toBe('');
  });

  it('the cluster: migrations, a failed send rolled back, a migration cancelled mid-send, a leader killed mid-migration, an intruder never granted, one writer per token', async () => {
    const run = await runCli(['demo'], { deadlineMs: 100_000 });
    expect(run.status, run.stderr).toBe(0);
    // Two clean migrations and the one whose leader was killed end done; the failed send aborts.
    expect(run.stdout.match(/^ {3}done in \d+ ms; handoff window/gm)).toHaveLength(3);
    expect(run.stdout).toMatch(/aborted in \d+ ms\n {3}cache-01 now: running on host-c/);
    expect(run.stdout).toMatch(/unmarking {2}\(after MIGRATION_CANCELLED\)[^]*aborted in \d+ ms\n {3}db-01 now: running on host-c/);
    expect(run.stdout).toMatch(/coord-\d leads now and finished it/);
    expect(run.stdout).toMatch(/\d+ attempts to take a disk of a VM being migrated; granted 0 times/);
    expect(run.stdout).not.toContain('VIOLATION');
    expect(run.stdout).toContain('demo finished');
    expect(existsSync(workingDirectory(run.stdout))).toBe(false);
  }, 120_000);

  it('stopped by SIGTERM mid-story (the agents still hold locks, the VMs run detached): every VM and process it started is gone, and its directory', async () => {
    // Not in a process group of its own: nothing but the demo itself may stop what it started.
    const demo = spawn(process.execPath, [CLI_ENTRY, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    demo.stdout.setEncoding('utf8').on('data', (t: string) => (stdout += t));
    demo.stderr.resume();
    const exited = new Promise<number | null>((resolve) => demo.once('exit', (code) => resolve(code)));
    let dir = '';
    try {
      dir = await waitFor(() => /Working directory (\S+)\n/.test(stdout) && workingDirectory(stdout), { what: 'the demo’s working directory', deadlineMs: 20_000, intervalMs: 10 });
      await waitFor(() => /cache-01 runs on host-c/.test(stdout), { what: 'the demo’s VMs to run', deadlineMs: 60_000, intervalMs: 20 });
      expect(processesMentioning(dir).length).toBeGreaterThanOrEqual(3 + 3 + 2); // agents, VMs, coordinators
      demo.kill('SIGTERM');
      const code = await waitFor(() => exited, { what: 'the demo to exit', deadlineMs: 30_000 });
      expect(code).toBe(128 + 15);
      expect(stdout).toContain(`interrupted (SIGTERM): every VM and process the demo started is stopped, ${dir} removed`);
      expect(processesMentioning(dir)).toEqual([]);
      expect(existsSync(dir)).toBe(false);
    } finally {
      demo.kill('SIGKILL');
      for (const { pid } of dir === '' ? [] : processesMentioning(dir)) process.kill(pid, 'SIGKILL');
    }
  }, 120_000);
});
