import type { Command } from 'commander';
import { runLocalDemo } from '../demo/local-demo.js';
import { reporting } from '../output.js';

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('run Baton’s story on this machine: an agent, VMs that want one disk, an upgrade that keeps every lock')
    .option('--reexecs <n>', 'how many times the agent re-executes itself', '5')
    .action(async (opts: { reexecs: string }) => {
      await reporting({}, async () => {
        await runLocalDemo({ reexecs: Number(opts.reexecs) });
      });
    });
}
