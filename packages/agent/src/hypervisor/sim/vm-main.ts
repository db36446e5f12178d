import { appendFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { asBatonError, BatonError, type Grant } from '@baton/core';
import { AgentClient } from '../../client/agent-client.js';

/**
 * A simulated VM: a real process that holds a restricted, connection-bound connection to its
 * host's agent (as QEMU holds virtlockd's socket) and, while it runs, appends a record
 * `vm host token seq` to each of its disks. The disks' contents are the evidence tests read.
 * It reports what happens as JSON lines on stdout.
 */
function emit(event: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(event) + '\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      socket: { type: 'string' },
      uuid: { type: 'string' },
      name: { type: 'string' },
      host: { type: 'string', default: 'local' },
      disk: { type: 'string', multiple: true, default: [] },
      shared: { type: 'string', multiple: true, default: [] },
      'interval-ms': { type: 'string', default: '50' },
    },
  });
  if (!values.socket || !values.uuid || !values.name) throw new BatonError('INVALID_REQUEST', 'sim VM needs --socket, --uuid and --name');
  const client = await AgentClient.connect({ socketPath: values.socket });
  await client.request('register', { owner: { uuid: values.uuid, name: values.name, pid: process.pid }, liveness: 'connection', restricted: true });
  let grants: Grant[];
  try {
    ({ grants } = await client.request('acquire', {
      resources: [...values.disk.map((name) => ({ name, mode: 'exclusive' as const })), ...values.shared.map((name) => ({ name, mode: 'shared' as const }))],
    }));
  } catch (err) {
    const e = asBatonError(err);
    emit({ event: 'refused', vm: values.name, code: e.code, message: e.message });
    process.exitCode = 3;
    await client.close();
    return;
  }
  emit({ event: 'running', vm: values.name, pid: process.pid, grants });
  let seq = 0;
  const timer = setInterval(() => {
    seq++;
    for (const g of grants) if (g.mode === 'exclusive') appendFileSync(g.resource, `${values.name} ${values.host} ${g.token} ${seq}\n`);
  }, Number(values['interval-ms']));
  // Without its agent connection the VM can no longer prove it holds its disks: it stops writing.
  await client.closed;
  clearInterval(timer);
  emit({ event: 'agent-connection-lost', vm: values.name, seq });
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
