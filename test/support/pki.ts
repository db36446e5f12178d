import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { findBinary } from './binaries.js';
import { LOOPBACK } from './ports.js';
import { makeTempDir, removeDir } from './temp-dir.js';

const run = promisify(execFile);

/** A certificate and its private key, as PEM files. */
export interface CertPair {
  certFile: string;
  keyFile: string;
}

/** One certificate authority and what it signed. */
export interface TestCa {
  caFile: string;
  /** For `https://127.0.0.1`: SAN IP:127.0.0.1, usable as a server and (etcd's own gateway dials itself) as a client. */
  server: CertPair;
  /** A client certificate (CN given at creation), extendedKeyUsage clientAuth. */
  client: CertPair;
}

/**
 * A throwaway PKI made with openssl at test time, in a temporary directory removed with the
 * fixture: a CA with a server and a client certificate, and a second, unrelated CA with its own
 * client certificate (one the first CA's servers must refuse). EC P-256 keys, valid for a day.
 */
export class TestPki implements AsyncDisposable {
  private constructor(
    readonly dir: string,
    readonly ca: TestCa,
    readonly rogue: TestCa,
  ) {}

  static async create(opts: { clientCn?: string } = {}): Promise<TestPki> {
    const openssl = findBinary('openssl', { debianPackage: 'openssl' });
    const dir = await makeTempDir('pki');
    try {
      const ssl = async (...args: string[]): Promise<void> => {
        await run(openssl, args, { cwd: dir });
      };
      const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
      const makeCa = async (name: string): Promise<TestCa> => {
        const f = (suffix: string): string => join(dir, `${name}-${suffix}`);
        await ssl('req', '-x509', '-new', ...key, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '1', '-subj', `/CN=${name} test CA`,
          '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
        const sign = async (leaf: string, cn: string, ext: string): Promise<CertPair> => {
          writeFileSync(f(`${leaf}.ext`), ext);
          await ssl('req', '-new', ...key, '-keyout', f(`${leaf}.key`), '-out', f(`${leaf}.csr`), '-subj', `/CN=${cn}`);
          await ssl('x509', '-req', '-in', f(`${leaf}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
            '-out', f(`${leaf}.crt`), '-days', '1', '-extfile', f(`${leaf}.ext`));
          return { certFile: f(`${leaf}.crt`), keyFile: f(`${leaf}.key`) };
        };
        const usage = 'keyUsage=critical,digitalSignature,keyEncipherment\n';
        const server = await sign('server', 'etcd', `${usage}extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:${LOOPBACK}\n`);
        const client = await sign('client', opts.clientCn ?? 'baton-agent', `${usage}extendedKeyUsage=clientAuth\n`);
        return { caFile: f('ca.crt'), server, client };
      };
      return new TestPki(dir, await makeCa('baton'), await makeCa('rogue'));
    } catch (err) {
      await removeDir(dir);
      throw err;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await removeDir(this.dir);
  }
}
