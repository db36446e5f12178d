import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Election, type HostSession, type Leadership } from '@baton/etcd';
import { connectEtcd, EtcdServer, openSession, waitFor } from '../support/index.js';

/** Leader election on KV, lease and watch: one leader, handed on in line, lost as a signal. */
let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterAll(async () => {
  await etcd?.close();
});

describe('coordinator election', () => {
  it('elects the oldest candidate, hands leadership on in line, and aborts the leader’s signal before anyone else leads', async () => {
    await using conn = connectEtcd(etcd.endpoints, 2);
    const [s1, s2, s3] = await Promise.all(['c1', 'c2', 'c3'].map((id) => openSession(conn, id)));
    const timeline: string[] = [];
    const l1 = await Election.campaign({ conn, session: s1!, name: 'coordinator', value: 'c1' });
    timeline.push('c1 leads');
    const election = new Election(conn, 'coordinator');
    // The line is the order in which candidacies reached etcd: c3 enters only once c2 stands.
    const enter = async (session: HostSession, value: string, stood: number): Promise<{ leads: Promise<Leadership> }> => {
      const leads = Election.campaign({ conn, session, name: 'coordinator', value }).then((l) => (timeline.push(`${value} leads`), l));
      await waitFor(async () => (await election.candidates()).length === stood, { what: `${value} in line`, deadlineMs: 5_000 });
      return { leads };
    };
    const { leads: second } = await enter(s2!, 'c2', 2);
    const { leads: third } = await enter(s3!, 'c3', 3);
    expect(await election.candidates()).toEqual(['c1', 'c2', 'c3']);
    expect(await election.leader()).toBe('c1');

    l1.signal.addEventListener('abort', () => timeline.push('c1 lost'));
    await l1.resign();
    const l2 = await second;
    expect(l1.signal.aborted).toBe(true);
    expect(await election.leader()).toBe('c2');

    // c2's process stops renewing (a crash): its signal aborts at once on its own side; c3 leads
    // only when etcd has expired c2's session, never while c2 could still believe it leads.
    l2.signal.addEventListener('abort', () => timeline.push('c2 lost'));
    await s2!.close();
    const l3 = await third;
    expect(timeline).toEqual(['c1 leads', 'c1 lost', 'c2 leads', 'c2 lost', 'c3 leads']);
    expect(l3.signal.aborted).toBe(false);
    await s3!.close({ revoke: true });
    expect(l3.signal.aborted).toBe(true);
    await s1!.close({ revoke: true });
  });

  it('stops a follower’s campaign at once when its session is lost while it waits in line, or when it is told to stop', async () => {
    await using conn = connectEtcd(etcd.endpoints, 2);
    const [s1, s2, s3] = await Promise.all(['c1', 'c2', 'c3'].map((id) => openSession(conn, id)));
    const leader = await Election.campaign({ conn, session: s1!, name: 'coordinator', value: 'c1' });
    const election = new Election(conn, 'coordinator');
    const waits = Election.campaign({ conn, session: s2!, name: 'coordinator', value: 'c2' }).catch((err: unknown) => err);
    await waitFor(async () => (await election.candidates()).length === 2, { what: 'c2 in line', deadlineMs: 5_000 });
    // c2's session is lost (closed here; expired on its clock alike): its candidacy is as good as
    // gone, and it must campaign again on a new session, not wait on for the leader to go.
    await s2!.close();
    expect(await waits).toMatchObject({ code: 'LEASE_LOST' });
    const stop = new AbortController();
    const stopped = Election.campaign({ conn, session: s3!, name: 'coordinator', value: 'c3', signal: stop.signal }).catch((err: unknown) => err);
    await waitFor(async () => (await election.candidates()).includes('c3'), { what: 'c3 in line', deadlineMs: 5_000 });
    stop.abort(new Error('stopping'));
    expect(await stopped).toEqual(new Error('stopping'));
    expect(leader.signal.aborted).toBe(false);
    await s3!.close({ revoke: true });
    await s1!.close({ revoke: true });
  });
});
