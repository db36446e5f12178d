import { parseArgs } from 'node:util';
import { asBatonError, BatonError, parseOrRefuse, LeaseLossSchema, type LeaseLoss } from '@baton/core';
import { AgentClient } from '../../client/agent-client.js';
import { emitter, Guest } from './guest.js';

/**
 * A simulated VM: a real process that holds a restricted, connection-bound connection to its
 * host's agent (as QEMU holds virtlockd's socket) and, while it may, appends a record
 * `vm host token seq t` to each exclusive disk through the disk's FenceGuard. It may write only
 * before the deadline its agent last gave it (its own watchdog, sanlock's wdmd role): if the agent
 * dies, the VM stops writing on time by itself, and resumes if a restarted agent re-adopts it.
 * It reports what happens as JSON lines on stdout.
 */
const { values } = parseArgs({
  options: {
    socket: { type: 'string' },
    uuid: { type: 'string' },
    name: { type: 'string' },
    host: { type: 'string', default: 'local' },
    disk: { type: 'string', multiple: true, default: [] },
    shared: { type: 'string', multiple: true, default: [] },
    'interval-ms': { type: 'string', default: '50' },
    'watchdog-ms': { type: 'string', default: '100' },
    policy: { type: 'string', default: 'kill' },
    /** With --policy killpath: the command, as a JSON array (the agent appends uuid and pid). */
    killpath: { type: 'string' },
  },
});

const emit = emitter(values.name ?? 'vm');

class SimVm {
  private client: AgentClient | undefined;
  private readonly guest: Guest;
  /** A disk refused a write: this VM's token is stale for good. */
  private refused = false;
  private renewing = false;

  constructor(
    private readonly socket: string,
    private readonly owner: { uuid: string; name: string; pid: number },
    private readonly onLeaseLoss: LeaseLoss,
  ) {
    this.guest = new Guest(owner.name, values.host, emit);
  }

  private async connect(): Promise<AgentClient> {
    const client = await AgentClient.connect({ socketPath: this.socket });
    await client.request('register', { owner: this.owner, liveness: 'connection', restricted: true, onLeaseLoss: this.onLeaseLoss });
    this.client = client;
    client.closed.then(() => {
      if (this.client !== client) return;
      this.client = undefined;
      // A one-host agent gives no deadline: its locks died with it, so writing stops now.
      if (this.guest.validUntil === Infinity) this.guest.validUntil = 0;
      emit({ event: 'agent-connection-lost', seq: this.guest.seq });
    }, () => undefined);
    return client;
  }

  async start(resources: { name: string; mode: 'exclusive' | 'shared' }[]): Promise<boolean> {
    const client = await this.connect();
    try {
      this.guest.holdGrants((await client.request('acquire', { resources })).grants);
    } catch (err) {
      const e = asBatonError(err);
      emit({ event: 'refused', code: e.code, message: e.message });
      await client.close();
      return false;
    }
    await this.renew();
    emit({ event: 'running', pid: process.pid, grants: this.guest.grants });
    setInterval(() => {
      if (!this.refused) this.refused = this.guest.write() === 'refused';
    }, Number(values['interval-ms']));
    setInterval(() => {
      if (!this.renewing) {
        this.renewing = true;
        this.renew()
          .catch((err: unknown) => emit({ event: 'watchdog-error', message: (err as Error).message }))
          .finally(() => (this.renewing = false));
      }
    }, Number(values['watchdog-ms']));
    return true;
  }

  /** Ask the agent until when this VM may write; reconnect first if the agent went away. */
  private async renew(): Promise<void> {
    let client = this.client;
    if (!client) {
      client = await this.connect();
      emit({ event: 'reconnected' });
    }
    const res = await client.request('watchdog', {});
    const mine = new Map(res.locks.map((g) => [g.resource, g]));
    const held = this.guest.grants;
    if (held.some((g) => !mine.has(g.resource))) {
      // The agent does not know this VM's leases any more: they are gone for good.
      emit({ event: 'lease-lost', seq: this.guest.seq, state: res.state });
      process.exit(4);
    }
    const changed = held.some((g) => mine.get(g.resource)!.token !== g.token);
    this.guest.holdGrants(held.map((g) => mine.get(g.resource)!));
    if (changed) emit({ event: 'tokens', grants: this.guest.grants });
    this.guest.validUntil = res.state === 'fenced' ? 0 : (res.validUntil ?? Infinity);
  }
}

async function main(): Promise<void> {
  if (!values.socket || !values.uuid || !values.name) throw new BatonError('INVALID_REQUEST', 'sim VM needs --socket, --uuid and --name');
  const onLeaseLoss = parseOrRefuse(LeaseLossSchema, { policy: values.policy, ...(values.killpath === undefined ? {} : { killpath: JSON.parse(values.killpath) as unknown }) }, 'bad --policy/--killpath');
  const vm = new SimVm(values.socket, { uuid: values.uuid, name: values.name, pid: process.pid }, onLeaseLoss);
  const ok = await vm.start([...values.disk.map((name) => ({ name, mode: 'exclusive' as const })), ...values.shared.map((name) => ({ name, mode: 'shared' as const }))]);
  if (!ok) process.exitCode = 3;
}

process.on('SIGTERM', () => {
  emit({ event: 'terminated', signal: 'SIGTERM' });
  process.exit(143);
});

main().catch((err: unknown) => {
  const e = asBatonError(err);
  emit({ event: 'error', message: e.message, code: e.code });
  process.exit(1);
});
