import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Debian packages that provide the servers the harness starts. */
export const DEBIAN_PACKAGES: Readonly<Record<string, string>> = {
  etcd: 'etcd-server',
  etcdctl: 'etcd-client',
  'nats-server': 'nats-server',
  'redis-server': 'redis-server',
};

// Debian puts some daemons (nats-server) in sbin, which is often not on a non-root PATH.
const SBIN_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin'];

/** A server binary the tests need is not installed; the tests fail rather than skip. */
export class MissingBinaryError extends Error {
  override readonly name = 'MissingBinaryError';
  readonly binary: string;
  readonly installCommand: string;
  constructor(binary: string, debianPackage: string, searched: readonly string[]) {
    const installCommand = `apt-get install -y ${debianPackage}`;
    super(
      `REQUIRED TEST BINARY MISSING: "${binary}" was not found in ${searched.join(', ')}. ` +
        `The tests need the real server and are never skipped without it. Install it with: ${installCommand}`,
    );
    this.binary = binary;
    this.installCommand = installCommand;
  }
}

export interface FindBinaryOptions {
  /** The package named in the error. @default DEBIAN_PACKAGES[name] ?? name */
  debianPackage?: string;
  /** Searched before the sbin directories. @default process.env.PATH */
  path?: string;
}

function isExecutableFile(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The absolute path of `name`, searched on PATH then the sbin directories; throws {@link MissingBinaryError}. */
export function findBinary(name: string, options: FindBinaryOptions = {}): string {
  const fromPath = (options.path ?? process.env['PATH'] ?? '').split(delimiter).filter((dir) => dir !== '');
  const dirs = [...new Set([...fromPath, ...SBIN_DIRS])];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  throw new MissingBinaryError(name, options.debianPackage ?? DEBIAN_PACKAGES[name] ?? name, dirs);
}
