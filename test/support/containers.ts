import { request } from 'node:http';
import { statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { EtcdCluster, EtcdServer, type EtcdClusterOptions, type EtcdServerOptions } from './etcd-server.js';
import { NatsServer, type NatsServerOptions } from './nats-server.js';
import { assertLoopback } from './ports.js';
import { RedisServer, type RedisServerOptions } from './redis-server.js';

/** Set to `1` to run the servers in containers (testcontainers) instead of local binaries. */
export const CONTAINERS_ENV = 'BATON_TEST_CONTAINERS';
const PING_TIMEOUT_MS = 300;

export interface SelectOptions {
  /** @default process.env */
  env?: NodeJS.ProcessEnv;
}

export function containersRequested(options: SelectOptions = {}): boolean {
  return (options.env ?? process.env)[CONTAINERS_ENV] === '1';
}

type Endpoint = { label: string; socketPath: string } | { label: string; host: string; port: number };

// The places testcontainers looks for a Docker-compatible API, DOCKER_HOST first.
function candidateEndpoints(env: NodeJS.ProcessEnv): Endpoint[] {
  const endpoints: Endpoint[] = [];
  const dockerHost = env['DOCKER_HOST'];
  if (dockerHost !== undefined && dockerHost !== '') {
    const url = new URL(dockerHost);
    if (url.protocol === 'unix:') endpoints.push({ label: dockerHost, socketPath: url.pathname });
    else if (url.protocol === 'tcp:' || url.protocol === 'http:') {
      assertLoopback(url.hostname);
      endpoints.push({ label: dockerHost, host: url.hostname, port: Number(url.port || 2375) });
    } else throw new Error(`DOCKER_HOST=${dockerHost}: only unix:// and loopback tcp:// are supported`);
  }
  const runtimeDir = env['XDG_RUNTIME_DIR'];
  const sockets = [
    '/var/run/docker.sock',
    ...(runtimeDir === undefined ? [] : [join(runtimeDir, 'docker.sock'), join(runtimeDir, 'podman/podman.sock')]),
    join(homedir(), '.docker/run/docker.sock'),
    '/run/podman/podman.sock',
  ];
  for (const socketPath of new Set(sockets)) endpoints.push({ label: socketPath, socketPath });
  return endpoints;
}

function ping(endpoint: Endpoint): Promise<boolean> {
  if ('socketPath' in endpoint) {
    try {
      if (!statSync(endpoint.socketPath).isSocket()) return Promise.resolve(false);
    } catch {
      return Promise.resolve(false);
    }
  }
  const target = 'socketPath' in endpoint ? { socketPath: endpoint.socketPath } : { host: endpoint.host, port: endpoint.port };
  return new Promise((resolve) => {
    const req = request({ ...target, path: '/_ping', agent: false, signal: AbortSignal.timeout(PING_TIMEOUT_MS) }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** Where a container runtime answered `GET /_ping`, if anywhere, and every place that was tried. */
export async function findContainerRuntime(options: SelectOptions = {}): Promise<{ endpoint?: string; tried: string[] }> {
  const endpoints = candidateEndpoints(options.env ?? process.env);
  const answers = await Promise.all(endpoints.map(ping));
  const found = endpoints.find((_, i) => answers[i] === true);
  return { ...(found === undefined ? {} : { endpoint: found.label }), tried: endpoints.map((e) => e.label) };
}

export async function containerRuntimeAvailable(options: SelectOptions = {}): Promise<boolean> {
  return (await findContainerRuntime(options)).endpoint !== undefined;
}

/** Throws, within milliseconds, unless a container runtime answers. */
export async function requireContainerRuntime(options: SelectOptions = {}): Promise<string> {
  const { endpoint, tried } = await findContainerRuntime(options);
  if (endpoint === undefined) {
    throw new Error(
      `${CONTAINERS_ENV}=1 but no container runtime answers at ${tried.join(', ')}; unset it to use the local servers`,
    );
  }
  return endpoint;
}

// Each server kind: how to start it locally. The container path has one answer for all of them.
async function select<T>(kind: string, local: () => Promise<T>, options: SelectOptions): Promise<T> {
  if (!containersRequested(options)) return local();
  const endpoint = await requireContainerRuntime(options);
  throw new Error(
    `${CONTAINERS_ENV}=1 and a container runtime answers at ${endpoint}, but testcontainers is not a ` +
      `dependency of @baton/test, so ${kind} cannot run in a container; unset ${CONTAINERS_ENV} to use the local servers`,
  );
}

export const etcd = (options: EtcdServerOptions & SelectOptions = {}): Promise<EtcdServer> =>
  select('etcd', () => EtcdServer.start(options), options);
export const etcdCluster = (options: EtcdClusterOptions & SelectOptions = {}): Promise<EtcdCluster> =>
  select('an etcd cluster', () => EtcdCluster.start(options), options);
export const nats = (options: NatsServerOptions & SelectOptions = {}): Promise<NatsServer> =>
  select('nats-server', () => NatsServer.start(options), options);
export const redis = (options: RedisServerOptions & SelectOptions = {}): Promise<RedisServer> =>
  select('redis-server', () => RedisServer.start(options), options);

export interface ServerSpec {
  etcd?: EtcdServerOptions;
  etcdCluster?: EtcdClusterOptions;
  nats?: NatsServerOptions;
  redis?: RedisServerOptions;
}

interface ServerKinds {
  etcd: EtcdServer;
  etcdCluster: EtcdCluster;
  nats: NatsServer;
  redis: RedisServer;
}

/** The servers a spec asked for, closed together. */
export type StartedServers<S extends ServerSpec> = { [K in keyof S & keyof ServerKinds]: ServerKinds[K] } & {
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
};

/** Starts every server in `spec` at once (local binaries, or containers when requested). */
export async function startServers<S extends ServerSpec>(spec: S, options: SelectOptions = {}): Promise<StartedServers<S>> {
  const starters: { [K in keyof ServerKinds]: (o: NonNullable<ServerSpec[K]>) => Promise<ServerKinds[K]> } = {
    etcd: (o) => etcd({ ...o, ...options }),
    etcdCluster: (o) => etcdCluster({ ...o, ...options }),
    nats: (o) => nats({ ...o, ...options }),
    redis: (o) => redis({ ...o, ...options }),
  };
  const kinds = (Object.keys(starters) as (keyof ServerKinds)[]).filter((kind) => spec[kind] !== undefined);
  const results = await Promise.allSettled(
    kinds.map((kind) => (starters[kind] as (o: unknown) => Promise<AsyncDisposable>)(spec[kind])),
  );
  const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= Promise.all(started.map((s) => s[Symbol.asyncDispose]())).then(() => undefined));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure !== undefined) {
    await close();
    throw failure.reason;
  }
  const servers = Object.fromEntries(kinds.map((kind, i) => [kind, started[i]]));
  return { ...servers, close, [Symbol.asyncDispose]: close } as unknown as StartedServers<S>;
}
