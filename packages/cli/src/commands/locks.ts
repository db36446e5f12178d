import type { Command } from 'commander';
import { printJson, printTable, reporting } from '../output.js';
import { withAgent } from '../socket.js';

export function registerLocksCommand(program: Command): void {
  program
    .command('locks')
    .description('every lock this host’s agent holds')
    .option('--socket <path>', 'agent socket')
    .option('--json', 'machine-readable output')
    .action(async (opts: { socket?: string; json?: boolean }) => {
      await reporting(opts, async () => {
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
