import { beforeEach } from 'vitest';
import { takeStartedProcesses } from './process.js';

/** Lines per process, and characters per line, a failed test prints. */
const TAIL_LINES = 60;
const LINE_CHARS = 500;

// A setup file (vitest.config.ts): when a test fails, the processes it started (agents, sim VMs,
// coordinators, servers) print how they ended and their last lines, so a failure seen once under
// CI load can be read afterwards instead of guessed at.
beforeEach(({ onTestFailed }) => {
  takeStartedProcesses();
  onTestFailed(() => {
    for (const proc of takeStartedProcesses()) {
      const exit = proc.exitInfo;
      const tail = proc.output().split('\n').slice(-TAIL_LINES).map((line) => (line.length > LINE_CHARS ? `${line.slice(0, LINE_CHARS)}…` : line));
      process.stderr.write(`\n--- ${proc.name} (pid ${proc.pid}, ${exit ? `exited ${JSON.stringify(exit)}` : 'running'}): last ${tail.length} lines\n${tail.join('\n')}\n`);
    }
  });
});
