import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leaseTiming } from '@baton/core';
import { EtcdServer, GrantHistory, monoNow, readDiskRecords, StampedEvents, startSimVm, TcpProxy, TwoHosts, waitFor } from '../support/index.js';
import { Contender, DeadlineWatch, expectTakeover, recordContender, recordExit, recordVm } from './fault-kit.js';

/**
 * F3: a half-open link between one agent and etcd. host-a reaches etcd through a TCP proxy that
 * is black-holed without closing anything: no reset, no FIN, every byte dropped both ways. The
 * agent must fence its VM on its own clock, before etcd could let the lease expire (the last
 * keepalive it sent + TTL), and the other host, which reaches etcd directly, takes over after.
 */
const TTL_S = 2;
const T = leaseTiming(TTL_S);

let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});

describe('F3 half-open link between an agent and etcd', () => {
  it('the VM is killed before the lease could expire in etcd; the other host is granted after its last write, with a higher token', async () => {
    await using proxy = await TcpProxy.start({ target: { port: Number(new URL(etcd.clientUrl).port) } });
    await using hosts = await TwoHosts.start(etcd.endpoints, TTL_S, [`http://${proxy.hostPort}`]);
    const { a, b } = hosts;
    const disk = hosts.disk('f3.img');
    const history = new GrantHistory();

    await using vm = await startSimVm(a, { uuid: randomUUID(), name: 'vm-a', disks: [disk], policy: 'kill' });
    using vmEvents = new StampedEvents(vm);
    let exitedAt = Infinity;
    void vm.proc.exited.then(() => (exitedAt = monoNow()));
    const running = await vmEvents.wait((e) => e.event === 'running', 'running');
    const tokenA = (running.e.grants as { token: number }[])[0]!.token;

    // host-b asks for the disk all along, from before the fault until it gets it.
    const contender = await Contender.on(b, 'contender-b');
    const watch = await DeadlineWatch.on(a);
    await watch.renewal();
    expect(proxy.connectionCount).toBeGreaterThan(0);
    const blackholedAt = monoNow();
    proxy.blackhole();
    const granting = contender.untilGranted(disk, 2 * T.ttlMs + 5_000);

    await waitFor(() => !vm.proc.running, { what: 'vm-a fenced (killed) by its agent', deadlineMs: 2 * T.ttlMs, intervalMs: 2 });
    await vm.proc.exited;
    const granted = await granting;
    watch.stop();

    // The watch keeps reading the deadline over the agent's socket (not through the proxy) until
    // the session expires, so it saw the last keepalive etcd answered.
    const lastKeepaliveSent = watch.lastValidUntil - T.fenceMs;
    const etcdExpiryBound = lastKeepaliveSent + T.ttlMs;
    const lastWrite = Math.max(...readDiskRecords(disk).filter((r) => r.vm === 'vm-a').map((r) => r.t));
    const log = a.json.events();
    expect(log.some((e) => typeof e.msg === 'string' && e.msg.includes('expired on this host'))).toBe(true);
    expect(log.some((e) => typeof e.msg === 'string' && e.msg.startsWith('fencing vm-a: kill'))).toBe(true);

    // Fenced on the agent's clock, before etcd could have let the lease go (the exit time is when
    // the test saw the process reaped: later than the real exit).
    expect(exitedAt).toBeLessThan(etcdExpiryBound);
    expect(vmEvents.find((e) => e.event === 'terminated') ?? vm.proc.exitInfo?.signal === 'SIGKILL').toBeTruthy();
    // host-b is granted only after vm-a's last write, and not before etcd could expire the lease.
    expect(lastWrite).toBeLessThan(granted.sentAt);
    expect(granted.repliedAt).toBeGreaterThanOrEqual(etcdExpiryBound);
    expect(granted.token).toBeGreaterThan(tokenA);
    expect(contender.attempts.slice(0, -1).every((t) => t.error?.code === 'RESOURCE_BUSY')).toBe(true);
    expect(proxy.toClient.bytesDropped + proxy.toTarget.bytesDropped).toBeGreaterThan(0);

    recordVm(history, vmEvents, 'vm-a@host-a');
    recordExit(history, vmEvents, 'vm-a@host-a', exitedAt);
    const releasedAt = await contender.release();
    recordContender(history, contender, disk, granted, releasedAt);
    await using vmB = await startSimVm(b, { uuid: randomUUID(), name: 'vm-b', disks: [disk], policy: 'kill' });
    await expectTakeover(vmB, disk, history, tokenA);
    const selfFenced = vmEvents.find((e) => e.event === 'self-fenced');
    console.info(
      `F3: TTL ${T.ttlMs} ms; last keepalive sent ${Math.round(blackholedAt - lastKeepaliveSent)} ms before the black hole; ` +
        `vm-a ${selfFenced ? `self-fenced ${Math.round(selfFenced.at - lastKeepaliveSent)} ms and ` : ''}exited ${Math.round(exitedAt - lastKeepaliveSent)} ms after the last keepalive sent ` +
        `(${Math.round(etcdExpiryBound - exitedAt)} ms before etcd could expire the lease; exit ${JSON.stringify(vm.proc.exitInfo)}); ` +
        `last write ${Math.round(granted.sentAt - lastWrite)} ms before host-b's winning attempt; host-b granted ${Math.round(granted.repliedAt - lastKeepaliveSent)} ms after the last keepalive sent, token ${tokenA} → ${granted.token}`,
    );
  });
});
