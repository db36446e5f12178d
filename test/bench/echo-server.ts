// The NDJSON echo floor's server: a separate Node process on a UNIX socket that writes every line
// it receives straight back. It does what any Node NDJSON server must do (one event-loop wake-up,
// one read, find the newline, one write) and nothing else, so a grant that costs 1.0× this is
// an agent adding nothing on top of Node's socket round trip.
//
//   node echo-server.js <socket path>     prints "ready" on stdout once listening
import { createServer } from 'node:net';

const path = process.argv[2];
if (path === undefined) {
  process.stderr.write('usage: echo-server <socket path>\n');
  process.exit(2);
}

const server = createServer((socket) => {
  socket.setEncoding('utf8');
  let buf = '';
  socket.on('data', (text: string) => {
    buf += text;
    let nl: number;
    while ((nl = buf.indexOf('\n')) !== -1) {
      socket.write(buf.slice(0, nl + 1));
      buf = buf.slice(nl + 1);
    }
  });
  socket.on('error', () => socket.destroy());
});
server.listen(path, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
