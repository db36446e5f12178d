import type { Command } from 'commander';
import { CLUSTER_LEASE_COLUMNS, clusterLeaseRows } from '@baton/core';
import { printJson, printTable, reporting } from '../output.js';
import { withAgent } from '../socket.js';

/**
 * `baton locks`: this host's locks, as its agent holds them (lock paths, pids). `baton locks
 * --cluster`: every lease of every host, as etcd records it. Two flags rather than one command
 * that changes its output with the agent's configuration: a script's `--json` must not change
 * shape because an etcd section was added.
 */
export function registerLocksCommand(program: Command): void {
  program
    .command('locks')
    .description('every lock this host’s agent holds; with --cluster, every lease of every host from etcd')
    .option('--cluster', 'the cluster view from etcd: host, owner, mode, token, since of every lease')
    .option('--socket <path>', 'agent socket')
    .option('--json', 'machine-readable output')
    .action(async (opts: { socket?: string; json?: boolean; cluster?: boolean }) => {
      await reporting(opts, async () => {
        if (opts.cluster) {
          const result = await withAgent(opts, (c) => c.request('clusterLocks', {}));
          if (opts.json) printJson(result);
          else printTable(clusterLeaseRows(result.leases), CLUSTER_LEASE_COLUMNS);
          return;
        }
        const result = await withAgent(opts, (c) => c.request('locks'));
        if (opts.json) {
          printJson(result);
          return;
        }
        const rows = result.locks.map((l) => ({
          resource: l.resource,
          lockspace: l.lockspace,
          mode: l.mode,
          owner: l.owner.name,
          pid: l.owner.pid,
          token: l.token,
          since: l.since,
          path: l.lockPath,
        }));
        printTable(rows, ['resource', 'lockspace', 'mode', 'owner', 'pid', 'token', 'since', 'path']);
      });
    });
}
