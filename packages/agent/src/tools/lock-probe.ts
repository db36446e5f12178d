import { closeSync, constants, openSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setLock, tryLock, unlock, type ByteRange, type LockKind } from '../sys/index.js';

/**
 * Another process's view of a lock file, for demos and tests: what virtlockd (classic POSIX lock
 * on byte 0) or QEMU (OFD locks on bytes 100+ and 200+) would see. Reports JSON lines on stdout.
 *
 *   --op try    one attempt; exit 0 if granted (then released), 3 if busy
 *   --op hold   take the locks and keep them until SIGTERM or SIGINT
 *   --op grab   try again and again until granted, then keep them until SIGTERM or SIGINT
 *   --op probe  try again and again until SIGTERM or SIGINT; every success is reported
 */
function emit(event: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(event) + '\n');
}

const { values } = parseArgs({
  options: {
    path: { type: 'string' },
    op: { type: 'string', default: 'try' },
    'lock-kind': { type: 'string', default: 'posix' },
    mode: { type: 'string', default: 'exclusive' },
    range: { type: 'string', multiple: true, default: ['0:1'] },
    'interval-us': { type: 'string', default: '200' },
  },
});
if (!values.path) throw new Error('--path is required');
const path = values.path;
const ofd = values['lock-kind'] === 'ofd';
const mode = values.mode as LockKind;
const ranges: ByteRange[] = values.range.map((r) => {
  const [start, len] = r.split(':').map(Number);
  return { start: start!, len: len! };
});
const fd = openSync(path, mode === 'exclusive' ? constants.O_RDWR : constants.O_RDONLY);

let stopping = false;
const stopped = Promise.withResolvers<void>();
const stop = (): void => {
  stopping = true;
  stopped.resolve();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

function tryAll(): boolean {
  const taken: ByteRange[] = [];
  for (const r of ranges) {
    if (!tryLock(fd, mode, r, ofd)) {
      for (const t of taken) unlock(fd, t, ofd);
      return false;
    }
    taken.push(r);
  }
  return true;
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/** Wait `ms`, then let signals be noticed. */
async function breathe(ms: number): Promise<void> {
  Atomics.wait(pause, 0, 0, ms);
  await new Promise((r) => setImmediate(r));
}

async function main(): Promise<void> {
  if (values.op === 'try') {
    const granted = tryAll();
    if (granted) for (const r of ranges) unlock(fd, r, ofd);
    emit({ event: granted ? 'granted' : 'busy' });
    closeSync(fd);
    process.exit(granted ? 0 : 3);
  }
  if (values.op === 'hold' || values.op === 'grab') {
    if (values.op === 'hold') for (const r of ranges) setLock(fd, mode, r, ofd);
    // A third party racing for the lock the moment its holder lets go.
    else while (!stopping && !tryAll()) await breathe(Number(values['interval-us']) / 1000);
    if (stopping) process.exit(0);
    emit({ event: 'holding', ranges });
    // A pending promise alone does not keep Node running; this timer does, until the signal.
    const keepAlive = setInterval(() => undefined, 1 << 30);
    await stopped.promise;
    clearInterval(keepAlive);
    process.exit(0);
  }
  let attempts = 0;
  let granted = 0;
  const intervalMs = Number(values['interval-us']) / 1000;
  emit({ event: 'probing' });
  while (!stopping) {
    for (let i = 0; i < 50 && !stopping; i++) {
      attempts++;
      if (tryAll()) {
        granted++;
        for (const r of ranges) unlock(fd, r, ofd);
        emit({ event: 'granted', attempt: attempts });
      }
      Atomics.wait(pause, 0, 0, intervalMs);
    }
    // Let stdin and signals be noticed.
    await new Promise((r) => setImmediate(r));
  }
  emit({ event: 'summary', attempts, granted });
  process.exit(0);
}

main().catch((err: unknown) => {
  emit({ event: 'error', message: (err as Error).message });
  process.exit(1);
});
