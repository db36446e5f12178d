import { readFileSync } from 'node:fs';

/**
 * Process identity from /proc. A pid alone can be reused; pid + start time (clock ticks since
 * boot, field 22 of /proc/PID/stat) names one process for the life of the machine.
 */
export function processStartTime(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); field 22 is rest[19]. A zombie has exited: it holds nothing.
  if (rest[0] === 'Z') return undefined;
  const ticks = Number(rest[19]);
  return Number.isFinite(ticks) ? ticks : undefined;
}

/** Whether the process that had this start time is still alive (not reused, not a zombie). */
export function isProcessAlive(pid: number, startTime: number): boolean {
  return processStartTime(pid) === startTime;
}

/** Sends `signal` to `pid`; false if the process had gone already (ESRCH), true if it was sent. */
export function signalProcess(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    return false;
  }
}

export function bootId(): string {
  return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}
