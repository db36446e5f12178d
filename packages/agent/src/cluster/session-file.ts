import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../state/atomic-file.js';

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
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      return { problem: (err as Error).message };
    }
    let parsed;
    try {
      parsed = SessionFileSchema.safeParse(JSON.parse(text));
    } catch {
      return { problem: `${this.path} is not JSON` };
    }
    if (!parsed.success) return { problem: `${this.path} has an unknown format` };
    if (parsed.data.host !== host) return { problem: `${this.path} belongs to host ${parsed.data.host}` };
    return { session: parsed.data.session };
  }

  write(host: string, session: string): void {
    writeFileAtomic(this.path, JSON.stringify({ v: 1, host, session }) + '\n');
  }

  remove(): void {
    rmSync(this.path, { force: true });
  }
}
