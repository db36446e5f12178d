// CPU pinning (taskset) and /proc readings for the benchmark.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';

/**
 * Pin every thread of `pid` (main thread, libuv pool, V8 workers: `taskset -a`) to `cpuList`
 * ("0", "1", "0,1"). Threads created later inherit the affinity of the thread that creates them,
 * and the affinity survives execve (the agent's re-exec).
 */
export function pin(pid: number, cpuList: string): void {
  execFileSync('taskset', ['-a', '-cp', cpuList, String(pid)], { stdio: 'ignore' });
}

/** The affinity of `pid`'s main thread, as taskset prints it ("0,1"). */
export function affinity(pid: number): string {
  const out = execFileSync('taskset', ['-cp', String(pid)], { encoding: 'utf8' });
  return out.slice(out.lastIndexOf(':') + 1).trim();
}

export function allCpus(): string {
  return cpus()
    .map((_, i) => i)
    .join(',');
}

/** A field of /proc/<pid>/status in bytes (VmRSS, RssAnon, ...). */
export function statusBytes(pid: number, field: string): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

export function rssBytes(pid: number): number {
  return statusBytes(pid, 'VmRSS');
}

/**
 * Wait until `pid`'s RSS stops moving: probe every `intervalMs` and stop once it stayed within
 * `toleranceBytes` of the probe `stableProbes` earlier (or at the deadline, reported as unsettled).
 */
export async function settledRss(pid: number, opts: { intervalMs?: number; stableProbes?: number; toleranceBytes?: number; deadlineMs?: number } = {}): Promise<{ rss: number; settled: boolean; waitedMs: number }> {
  const intervalMs = opts.intervalMs ?? 50;
  const stableProbes = opts.stableProbes ?? 10;
  const tolerance = opts.toleranceBytes ?? 32 * 1024;
  const deadline = performance.now() + (opts.deadlineMs ?? 15_000);
  const started = performance.now();
  const history: number[] = [rssBytes(pid)];
  while (performance.now() < deadline) {
    await delay(intervalMs);
    history.push(rssBytes(pid));
    if (history.length > stableProbes) {
      const window = history.slice(-stableProbes - 1);
      if (Math.max(...window) - Math.min(...window) <= tolerance) {
        return { rss: history[history.length - 1]!, settled: true, waitedMs: performance.now() - started };
      }
    }
  }
  return { rss: history[history.length - 1]!, settled: false, waitedMs: performance.now() - started };
}

/** CPU time (user + system) `pid` has used, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields after the command: state is field 3, utime 14, stime 15 (1-based, man 5 proc).
  const ticks = Number(fields[14 - 3]) + Number(fields[15 - 3]);
  return ticks / 100; // USER_HZ is 100 on Linux
}

export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** OFD locks in /proc/locks (the agent is the only OFD user during the benchmark). */
export function ofdLockCount(): number {
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .filter((l) => l.includes('OFDLCK')).length;
}

export function machineInfo(): { cpus: number; cpuModel: string; kernel: string; node: string; memGiB: number } {
  const c = cpus();
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const memKb = Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
  return {
    cpus: c.length,
    cpuModel: c[0]?.model ?? 'unknown',
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    node: process.version,
    memGiB: Math.round(memKb / 1024 / 1024),
  };
}

/**
 * CPU seconds: the whole machine's busy time (/proc/stat) and this process's plus its reaped
 * children's (/proc/self/stat). The difference over a run is what other processes used.
 */
export function cpuTimes(): { machineBusy: number; selfAndChildren: number } {
  const cpuLine = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice: busy excludes idle, iowait and guests.
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = cpuLine;
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
  // utime 14, stime 15, cutime 16, cstime 17 (1-based); f[0] is field 3.
  const mine = f[11]! + f[12]! + f[13]! + f[14]!;
  return { machineBusy: (user + nice + system + irq + softirq + steal) / 100, selfAndChildren: mine / 100 };
}
