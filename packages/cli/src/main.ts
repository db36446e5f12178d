#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { registerAgentCommands } from './commands/agent.js';
import { registerCoordinatorCommand } from './commands/coordinator.js';
import { registerDemoCommand } from './commands/demo.js';
import { registerHostCommands } from './commands/hosts.js';
import { registerLockCommands } from './commands/lock.js';
import { registerLocksCommand } from './commands/locks.js';
import { registerMigrationCommands } from './commands/migrate.js';
import { registerVmCommands } from './commands/vm.js';

const program = new Command('baton')
  .description('Baton: cluster-wide leases for VM disks, safe live migration')
  .exitOverride()
  .showHelpAfterError();
registerAgentCommands(program);
registerLockCommands(program);
registerLocksCommand(program);
registerHostCommands(program);
registerCoordinatorCommand(program);
registerMigrationCommands(program);
registerVmCommands(program);
registerDemoCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  // Usage errors exit 2, like every INVALID_REQUEST; commander has already printed why.
  if (err instanceof CommanderError) process.exitCode = err.exitCode === 0 ? 0 : 2;
  else throw err;
}
