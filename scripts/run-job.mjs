// The job behind an npm script (the tests, the demo, the bench), run in the foreground until it
// ends. Plain JavaScript, like bootstrap.mjs: it runs before anything is built.
import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';

/**
 * Runs `cmd` with the terminal and resolves with its exit status (128 + the signal's number if a
 * signal ended it). This process stays until the job has ended, so npm returns only once the job
 * has stopped what it started, and a signal meant to stop the job reaches it once:
 * - Ctrl-C (SIGINT) and a terminal's hangup (SIGHUP) reach the whole foreground process group,
 *   the job included; they are not passed on, or the job would count them twice (npm forwards
 *   SIGINT to this process as well);
 * - SIGTERM is sent to one process (npm forwards it here, as a CI runner's timeout sends it to
 *   npm): it is passed on.
 */
export function runJob(cmd, args, { cwd, env }) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: 'inherit' });
    const onSignal = (signal) => {
      if (signal === 'SIGTERM') child.kill(signal);
    };
    const signals = ['SIGINT', 'SIGHUP', 'SIGTERM'];
    for (const s of signals) process.on(s, onSignal);
    const done = () => {
      for (const s of signals) process.off(s, onSignal);
    };
    child.on('error', (err) => {
      done();
      reject(new Error(`could not run ${cmd}: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      done();
      resolve(code ?? 128 + (osConstants.signals[signal] ?? 0));
    });
  });
}
