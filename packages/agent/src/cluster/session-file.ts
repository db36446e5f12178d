import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../state/atomic-file.js';
import { readHostFile } from '../state/host-file.js';

/**
 * The id of the host's etcd session, kept in the state dir so an agent restarted after a crash
 * (SIGKILL, OOM) adopts the session its VMs' leases hang on instead of abandoning them.
 */
const SessionFileSchema = z.object({ v: z.literal(1), host: z.string(), session: z.string() });

export class SessionFile {
  private readonly path: string;

  constructor(stateDir: string) {
    this.path = join(stateDir, 'session.json');
  }

  /** The recorded session of `host`; a file for another host or unreadable is ignored (and said so). */
  read(host: string): { session?: string; problem?: string } {
    const { value, problem } = readHostFile(this.path, SessionFileSchema, host);
    return { ...(value === undefined ? {} : { session: value.session }), ...(problem === undefined ? {} : { problem }) };
  }

  write(host: string, session: string): void {
    writeFileAtomic(this.path, JSON.stringify({ v: 1, host, session }) + '\n');
  }

  remove(): void {
    rmSync(this.path, { force: true });
  }
}
