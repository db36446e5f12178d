import type { Command } from 'commander';
import { BatonError, CLUSTER_LEASE_COLUMNS, clusterLeaseRows, HOST_COLUMNS, hostRows } from '@baton/core';
import { printJson, printTable, reporting } from '../output.js';
import { withAgent } from '../socket.js';

interface FenceOpts {
  iHaveFenced?: boolean;
  reason?: string;
  socket?: string;
  json?: boolean;
}

export function registerHostCommands(program: Command): void {
  program
    .command('hosts')
    .description('the hosts of the cluster, as etcd records them: session, TTL left, last keepalive')
    .option('--socket <path>', 'agent socket')
    .option('--json', 'machine-readable output')
    .action(async (opts: { socket?: string; json?: boolean }) => {
      await reporting(opts, async () => {
        const result = await withAgent(opts, (c) => c.request('hosts', {}));
        if (opts.json) printJson(result);
        else printTable(hostRows(result.hosts), HOST_COLUMNS);
      });
    });

  const host = program.command('host').description('act on one host of the cluster');
  host
    .command('fence <host>')
    .description(
      'declare HOST dead and fenced (powered off, its VMs gone) and release its leases now instead of at session expiry. ' +
        'Refused (HOST_ALIVE) while HOST still renews its session; recorded in etcd under audit/fence/',
    )
    .option('--i-have-fenced', 'confirm that HOST is powered off or otherwise cannot write to any disk')
    .option('--reason <text>', 'why, for the audit record (required)')
    .option('--socket <path>', 'agent socket (the agent of any other host)')
    .option('--json', 'machine-readable output')
    .action(async (target: string, opts: FenceOpts) => {
      await reporting(opts, async () => {
        if (!opts.iHaveFenced) {
          throw new BatonError(
            'INVALID_REQUEST',
            `refusing to declare ${target} fenced without --i-have-fenced. Releasing the leases of a host whose VMs still run lets two hosts write the same disks: ` +
              `power ${target} off (or cut it from the storage) first, then run again with --i-have-fenced --reason TEXT`,
            { details: { host: target, missing: '--i-have-fenced' } },
          );
        }
        const reason = opts.reason?.trim() ?? '';
        if (reason === '') throw new BatonError('INVALID_REQUEST', 'a --reason is required: it is kept in the audit record', { details: { host: target, missing: '--reason' } });
        const { result, leases } = await withAgent(opts, async (c) => {
          // What the host holds just before the declaration: the agent answers only with a count.
          const before = (await c.request('clusterLocks', {})).leases.filter((l) => l.host === target);
          const fenced = await c.request('fenceHost', { host: target, iHaveFenced: true, reason });
          return { result: fenced, leases: before };
        });
        if (opts.json) {
          printJson({ ...result, leases });
          return;
        }
        process.stdout.write(`host ${result.host} declared dead and fenced: ${result.released} lease(s) released\naudit record: ${result.audit}\n`);
        if (leases.length > 0) {
          process.stdout.write(`leases ${result.host} held just before the declaration:\n`);
          printTable(clusterLeaseRows(leases), CLUSTER_LEASE_COLUMNS);
        }
      });
    });
}
