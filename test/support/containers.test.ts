import { describe, expect, it } from 'vitest';
import {
  containerRuntimeAvailable,
  containersRequested,
  etcd,
  requireContainerRuntime,
  startServers,
} from './containers.js';
import { pidAlive } from './process.js';

const containers = { BATON_TEST_CONTAINERS: '1' };
const clearMessage =
  /^BATON_TEST_CONTAINERS=1 but no container runtime answers at .*\/var\/run\/docker\.sock.*; unset it to use the local servers$/;

describe('container selection (no Docker engine on this machine)', () => {
  it('reads BATON_TEST_CONTAINERS=1 only', () => {
    expect(containersRequested({ env: containers })).toBe(true);
    expect(containersRequested({ env: { BATON_TEST_CONTAINERS: '0' } })).toBe(false);
    expect(containersRequested({ env: {} })).toBe(false);
  });

  it('finds no container runtime', async () => {
    expect(await containerRuntimeAvailable({ env: {} })).toBe(false);
  });

  it('requireContainerRuntime() rejects within milliseconds with a clear message', async () => {
    const started = performance.now();
    await expect(requireContainerRuntime({ env: containers })).rejects.toThrow(clearMessage);
    expect(performance.now() - started).toBeLessThan(100);
  });

  it('names DOCKER_HOST among the places it tried', async () => {
    const env = { ...containers, DOCKER_HOST: 'unix:///nonexistent/docker.sock' };
    await expect(requireContainerRuntime({ env })).rejects.toThrow(/answers at unix:\/\/\/nonexistent\/docker\.sock, /);
  });

  it('never probes a DOCKER_HOST off loopback', async () => {
    const env = { ...containers, DOCKER_HOST: 'tcp://10.1.2.3:2375' };
    await expect(requireContainerRuntime({ env })).rejects.toThrow(/refusing to contact 10\.1\.2\.3/);
  });

  it('a server asked for with BATON_TEST_CONTAINERS=1 fails fast instead of falling back', async () => {
    const started = performance.now();
    await expect(etcd({ env: containers })).rejects.toThrow(clearMessage);
    await expect(startServers({ redis: {}, nats: {} }, { env: containers })).rejects.toThrow(clearMessage);
    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it('without it, startServers() starts the local binaries and closes them together', async () => {
    const servers = await startServers({ redis: {}, nats: { jetstream: true } }, { env: {} });
    expect(await servers.redis.command('PING')).toBe('PONG');
    expect((await servers.nats.info()).jetstream).toBe(true);
    const pids = [servers.redis.pid ?? -1, servers.nats.pid ?? -1];
    await servers[Symbol.asyncDispose]();
    await servers.close();
    for (const pid of pids) expect(pidAlive(pid)).toBe(false);
  });
});
