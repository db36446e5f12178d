import type { Command } from 'commander';
import { runAgentProcess } from '@baton/agent';
import { printJson, reporting } from '../output.js';
import { withAgent } from '../socket.js';

export function registerAgentCommands(program: Command): void {
  const agent = program
    .command('agent')
    .description('run the host agent (config: defaults < --config file < BATON_* environment)')
    .option('-c, --config <file>', 'JSON configuration file')
    .action(async (opts: { config?: string }) => {
      await runAgentProcess({ configPath: opts.config });
    });

  agent
    .command('stop')
    .description('stop the agent; refused while locks are held unless --release-all')
    .option('--release-all', 'drop every lock held (the VMs using them lose their protection)')
    .option('--socket <path>', 'agent socket')
    .option('--json', 'machine-readable output')
    .action(async (opts: { releaseAll?: boolean; socket?: string; json?: boolean }) => {
      await reporting(opts, async () => {
        const result = await withAgent(opts, (c) => c.request('shutdown', { releaseAll: opts.releaseAll ?? false }));
        if (opts.json) printJson(result);
        else process.stdout.write(`agent stopping; ${result.released} lock(s) released\n`);
      });
    });
}
