import { describe, expect, it } from 'vitest';
import type { MigrationRecord } from '@baton/core';
import { runCli } from '../support/agent-io.js';
import { httpJson, MigrationCluster, NatsServer, quiet, startServers, waitFor } from '../support/index.js';

/**
 * Migrations once they have ended: etcd keeps the open records and the newest settled ones; older
 * ones move to the JetStream stream over the cluster's events, from where they are still read by
 * id, through any replica and the CLI. Without JetStream nothing leaves etcd.
 */

/** The messages a NATS server's JetStream holds in `stream` (its monitoring endpoint). */
async function streamMessages(nats: NatsServer, stream: string): Promise<number> {
  const jsz = await httpJson<{ account_details?: { stream_detail?: { name: string; state: { messages: number } }[] }[] }>(`${nats.monitorUrl}/jsz?streams=true`);
  const found = (jsz.body.account_details ?? []).flatMap((a) => a.stream_detail ?? []).find((s) => s.name === stream);
  return found?.state.messages ?? 0;
}

describe('migration history', () => {
  it('keeps the newest settled records in etcd and moves older ones to the JetStream stream, still read by id through either replica and the CLI', async () => {
    await using servers = await startServers({ etcd: {}, nats: { jetstream: true } });
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    const history = { keepClosed: 1 };
    await mc.addCoordinator('coord-1', quiet, { history });
    const leader = await mc.leader();
    const follower = await mc.addCoordinator('coord-2', quiet, { history });
    await mc.startVm('host-a', 'hist-1', ['hist-1.img']);
    const settled: MigrationRecord[] = [];
    for (const to of ['host-b', 'host-a', 'host-b']) settled.push(await mc.migrate('hist-1', to));
    expect(settled.map((r) => r.phase)).toEqual(['done', 'done', 'done']);

    // etcd: the newest settled record only, once the older ones are stored in the stream.
    const stream = leader.coordinator.history.stream;
    expect(stream).toBe(`BATON_${mc.cluster}`);
    await waitFor(async () => (await leader.coordinator.store.list()).length === 1, { what: 'two records moved out of etcd', deadlineMs: 10_000 });
    expect((await leader.coordinator.store.list()).map((s) => s.record.id)).toEqual([settled[2]!.id]);
    // The stream holds a version per phase each migration went through (and the copies stored before removal).
    expect(await streamMessages(servers.nats, stream)).toBeGreaterThanOrEqual(settled.reduce((n, r) => n + r.timeline.length, 0));

    // Read back by id, as they ended, from the leader and from the follower.
    for (const via of [leader, follower]) {
      for (const r of settled) {
        const got = await httpJson<MigrationRecord>(`${via.url}/v1/migrations/${r.id}`);
        expect([got.status, got.body], `${r.id} via ${via.coordinator.id}`).toEqual([200, r]);
      }
    }
    // The progress stream of an ended migration sends it once, as its end.
    const events = await fetch(`${follower.url}/v1/migrations/${settled[0]!.id}/events`, { signal: AbortSignal.timeout(5_000) });
    expect(await events.text()).toBe(`event: end\ndata: ${JSON.stringify(settled[0])}\n\n`);
    // `baton migrations ID` prints its timeline.
    const shown = await runCli(['migrations', settled[0]!.id, '--json', '--coordinator', follower.url], { deadlineMs: 30_000 });
    expect([shown.status, JSON.parse(shown.stdout)], shown.stderr).toEqual([0, settled[0]]);
    // An id neither etcd nor the stream knows is still not found.
    expect((await httpJson<{ error: { code: string } }>(`${leader.url}/v1/migrations/no-such-migration`)).body.error.code).toBe('MIGRATION_NOT_FOUND');
  });

  it('removes nothing from etcd when NATS has no JetStream', async () => {
    await using servers = await startServers({ etcd: {}, nats: {} });
    await using mc = await MigrationCluster.start({ etcd: servers.etcd.endpoints, nats: [servers.nats.url] });
    await mc.addCoordinator('coord-1', quiet, { history: { keepClosed: 0 } });
    const leader = await mc.leader();
    await mc.startVm('host-a', 'hist-2', ['hist-2.img']);
    const first = await mc.migrate('hist-2', 'host-b');
    const second = await mc.migrate('hist-2', 'host-a');
    expect((await leader.coordinator.store.list()).map((s) => s.record.id).sort()).toEqual([first.id, second.id].sort());
    expect((await httpJson<MigrationRecord>(`${leader.url}/v1/migrations/${first.id}`)).body).toEqual(first);
    expect((await httpJson<{ error: { code: string } }>(`${leader.url}/v1/migrations/no-such-migration`)).body.error.code).toBe('MIGRATION_NOT_FOUND');
  });
});
