// The relay floor of the cluster section: a separate Node process on a UNIX socket that turns
// each line into the grant's etcd transaction (RawGrant, through the etcd3 package, as the agent
// sends it) and writes the revision back. It does what any process between a client and etcd
// must do (a socket round trip and an etcd call of its own) and nothing else: a fenced acquire
// that costs 1.0× this is an agent adding nothing to being in the path.
//
//   node relay-server.js <socket path> <etcd url> <lease id>     prints "ready" once listening
//
// Lines: `a` grants (answers the revision), `r <revision>` releases (answers `ok`); an error
// answers `error <message>`.
import { createServer } from 'node:net';
import { Etcd3 } from 'etcd3';
import { RawGrant } from './raw-etcd.js';

const [path, url, lease] = process.argv.slice(2);
if (path === undefined || url === undefined || lease === undefined) {
  process.stderr.write('usage: relay-server <socket path> <etcd url> <lease id>\n');
  process.exit(2);
}
const etcd = new Etcd3({ hosts: url });
const grant = new RawGrant(etcd, lease, 'disk-relay');

async function answer(line: string): Promise<string> {
  try {
    return line === 'a' ? await grant.acquire() : (await grant.release(line.slice(2)), 'ok');
  } catch (err) {
    return `error ${(err as Error).message}`;
  }
}

const server = createServer((socket) => {
  socket.setEncoding('utf8');
  let buf = '';
  // One client, one request at a time: replies go back in order.
  let chain = Promise.resolve();
  socket.on('data', (text: string) => {
    buf += text;
    let nl: number;
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      chain = chain.then(async () => {
        socket.write(`${await answer(line)}\n`);
      });
    }
  });
  socket.on('error', () => socket.destroy());
});
server.listen(path, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
