// The in-process floors: what one fcntl lock+unlock costs with no agent around it.
import { closeSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nowUs, Samples, summarize, type Summary } from './stats.js';

/**
 * The agent's own N-API binding, loaded directly. The agent reaches it only through its sys/
 * adapter (which wraps each call with a range object and an errno check); a benchmark of the
 * floor must time the bare call, so it loads the .node file itself. Measurement code only: no
 * product code imports the binding from here.
 */
interface NativeBinding {
  setlk(fd: number, kind: 0 | 1 | 2, start: number, len: number, ofd: boolean): number;
}
const native = createRequire(import.meta.url)(
  fileURLToPath(new URL('../../../packages/agent/native/build/Release/baton_sys.node', import.meta.url)),
) as NativeBinding;

/** fs-ext has no type declarations; the one call compared in docs/adr is typed here. */
interface FsExt {
  fcntl(fd: number, cmd: 'setlk', arg: number, cb: (err: Error | null) => void): void;
  constants: { F_WRLCK: number; F_UNLCK: number };
}
const fsExt = createRequire(import.meta.url)('fs-ext') as FsExt;

export interface FloorResults {
  ofd: Summary;
  posix: Summary;
  fsExt: Summary;
}

function fsExtSetlk(fd: number, type: number): Promise<void> {
  return new Promise((resolve, reject) => fsExt.fcntl(fd, 'setlk', type, (err) => (err ? reject(err) : resolve())));
}

export async function measureFloors(dir: string, opts: { nSync: number; nAsync: number }): Promise<FloorResults> {
  const path = join(dir, 'floor.lock');
  const fd = openSync(path, 'w+', 0o600);
  try {
    const samples = new Samples();
    const syncLoop = (series: string, ofd: boolean, n: number, record: boolean): void => {
      for (let i = 0; i < n; i++) {
        const t0 = nowUs();
        const a = native.setlk(fd, 2, 0, 1, ofd);
        const b = native.setlk(fd, 0, 0, 1, ofd);
        const t1 = nowUs();
        if (a !== 0 || b !== 0) throw new Error(`setlk failed: ${a} ${b}`);
        if (record) samples.add(series, t1 - t0);
      }
    };
    // Interleave OFD and classic POSIX in rounds, after a warm-up that lets V8 optimise the loop.
    syncLoop('ofd', true, 20_000, false);
    syncLoop('posix', false, 20_000, false);
    for (let r = 0; r < 5; r++) {
      syncLoop('ofd', true, Math.ceil(opts.nSync / 5), true);
      syncLoop('posix', false, Math.ceil(opts.nSync / 5), true);
    }
    // fs-ext: whole file (it cannot do a byte range), classic POSIX lock, through libuv's pool.
    for (let i = 0; i < Math.min(500, opts.nAsync); i++) {
      await fsExtSetlk(fd, fsExt.constants.F_WRLCK);
      await fsExtSetlk(fd, fsExt.constants.F_UNLCK);
    }
    for (let i = 0; i < opts.nAsync; i++) {
      const t0 = nowUs();
      await fsExtSetlk(fd, fsExt.constants.F_WRLCK);
      await fsExtSetlk(fd, fsExt.constants.F_UNLCK);
      samples.add('fs-ext', nowUs() - t0);
    }
    return { ofd: samples.summary('ofd'), posix: samples.summary('posix'), fsExt: summarize(samples.get('fs-ext')) };
  } finally {
    closeSync(fd);
  }
}
