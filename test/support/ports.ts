import { createServer, type Server } from 'node:net';

/** The one interface every harness server binds to. */
export const LOOPBACK = '127.0.0.1';

/**
 * Throws unless `host` is a loopback address: a packet to any other address leaves the sandbox
 * (DESIGN §10), so every socket the harness opens goes through this check first.
 */
export function assertLoopback(host: string): void {
  const bare = host.replace(/^\[|\]$/g, '');
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(bare) || bare === '::1' || bare === 'localhost') return;
  throw new Error(`refusing to contact ${host}: the test harness only talks to loopback addresses`);
}

// Ports this process handed out recently: the kernel may offer a just-closed port again before the
// server we handed it to has bound it, and two of our own servers must never race for one port.
const recentlyIssued = new Set<number>();
const RECENT_LIMIT = 4096;

function listen(server: Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') reject(new Error('no TCP address'));
      else resolve(address.port);
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * `count` distinct free TCP ports on `host`. All listeners stay open until every port is chosen,
 * so the kernel cannot hand the same port out twice within one call.
 */
export async function freePorts(count: number, host: string = LOOPBACK): Promise<number[]> {
  assertLoopback(host);
  const held: Server[] = [];
  const ports: number[] = [];
  try {
    // Bounded: a port we issued before may come back; skip it a limited number of times.
    for (let attempts = 0; ports.length < count && attempts < count * 20; attempts++) {
      const server = createServer();
      held.push(server);
      const port = await listen(server, host);
      if (recentlyIssued.has(port)) continue;
      ports.push(port);
    }
  } finally {
    await Promise.all(held.map(closeServer));
  }
  if (ports.length < count) throw new Error(`could only find ${ports.length} of ${count} free ports`);
  for (const port of ports) {
    if (recentlyIssued.size >= RECENT_LIMIT) recentlyIssued.clear();
    recentlyIssued.add(port);
  }
  return ports;
}

/** One free TCP port on `host` (see {@link freePorts}). */
export async function freePort(host: string = LOOPBACK): Promise<number> {
  const [port] = await freePorts(1, host);
  if (port === undefined) throw new Error('no free port');
  return port;
}
