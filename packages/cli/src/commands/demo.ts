import { InvalidArgumentError, type Command } from 'commander';
import { runClusterDemo } from '../demo/cluster-demo.js';
import { runLocalDemo } from '../demo/local-demo.js';
import { reporting } from '../output.js';

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('run Baton’s story on this machine: a cluster (etcd, NATS, three hosts, two coordinators) and live migrations; --local: one host and its upgrade')
    .option('--local', 'the one-host story instead: an agent, VMs that want one disk, an upgrade that keeps every lock')
    .option('--reexecs <n>', 'with --local: how many times the agent re-executes itself (0–100)', reexecCount, 5)
    .action(async (opts: { local?: boolean; reexecs: number }) => {
      await reporting({}, async () => {
        if (opts.local) await runLocalDemo({ reexecs: opts.reexecs });
        else await runClusterDemo();
      });
      // Everything the demo started is stopped by now; an interrupted or failed story may still
      // be waiting on a step's deadline, which is not worth waiting for.
      process.exit();
    });
}

function reexecCount(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 100) throw new InvalidArgumentError('a whole number from 0 to 100.');
  return n;
}
