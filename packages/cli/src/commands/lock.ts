import type { Command } from 'commander';
import type { AgentClient } from '@baton/agent';
import type { AgentParams, Grant, LockMode } from '@baton/core';

type RefInput = AgentParams<'acquire'>['resources'][number];
import { printJson, printTable, reporting } from '../output.js';
import { withAgent } from '../socket.js';

interface OwnerOpts {
  owner: string;
  name: string;
  pid?: string;
  socket?: string;
  json?: boolean;
  lockspace?: string;
  shared?: boolean;
}

/** The columns of a table of grants. */
export const GRANT_COLUMNS = ['resource', 'lockspace', 'mode', 'token', 'since'] as const;

/** The command line's resource names as refs in the chosen lockspace (the agent's default if none). */
function refsOf(names: string[], opts: OwnerOpts, mode?: LockMode): RefInput[] {
  return names.map((name) => ({ name, ...(mode ? { mode } : {}), ...(opts.lockspace ? { lockspace: opts.lockspace } : {}) }));
}

function printGrants(grants: Grant[], opts: OwnerOpts): void {
  if (opts.json) printJson({ grants });
  else printTable(grants, GRANT_COLUMNS);
}

/** A command-line owner is pid-bound: it outlives this short connection, until its process exits. */
async function registerOwner(client: AgentClient, opts: OwnerOpts, pidRequired: boolean): Promise<void> {
  const pid = opts.pid === undefined ? (pidRequired ? process.ppid : undefined) : Number(opts.pid);
  await client.request('register', { owner: { uuid: opts.owner, name: opts.name, ...(pid === undefined ? {} : { pid }) }, liveness: 'pid' });
}

function ownerOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--owner <uuid>', 'owner (VM) uuid')
    .requiredOption('--name <name>', 'owner (VM) name')
    .option('--socket <path>', 'agent socket')
    .option('--lockspace <name>', 'lockspace (default: the agent’s default)')
    .option('--json', 'machine-readable output');
}

export function registerLockCommands(program: Command): void {
  const lock = program.command('lock').description('acquire, release or inquire an owner’s locks');

  ownerOptions(lock.command('acquire <resources...>'))
    .description('acquire every resource, all or none, for an owner bound to a process')
    .option('--pid <pid>', 'the owner’s process; its exit releases the locks (default: the calling shell)')
    .option('--shared', 'shared mode (shareable disks) instead of exclusive')
    .action(async (resources: string[], opts: OwnerOpts) => {
      await reporting(opts, async () => {
        const mode: LockMode = opts.shared ? 'shared' : 'exclusive';
        const { grants } = await withAgent(opts, async (c) => {
          await registerOwner(c, opts, true);
          return c.request('acquire', { resources: refsOf(resources, opts, mode) });
        });
        printGrants(grants, opts);
      });
    });

  ownerOptions(lock.command('release [resources...]'))
    .description('release resources (all the owner holds if none are named)')
    .option('--pid <pid>', 'the owner’s process, if it was registered with one')
    .action(async (resources: string[], opts: OwnerOpts) => {
      await reporting(opts, async () => {
        const { released } = await withAgent(opts, async (c) => {
          // An owner this host does not know is refused (NOT_REGISTERED, naming it), not registered
          // anew only to release nothing.
          await c.request('inquire', { owner: opts.owner });
          await registerOwner(c, opts, false);
          return c.request('release', resources.length === 0 ? {} : { resources: refsOf(resources, opts) });
        });
        printGrants(released, opts);
      });
    });

  lock
    .command('inquire')
    .description('an owner’s lock state, as the versioned document a migration carries')
    .requiredOption('--owner <uuid>', 'owner (VM) uuid')
    .option('--socket <path>', 'agent socket')
    .option('--json', 'machine-readable output')
    .action(async (opts: { owner: string; socket?: string; json?: boolean }) => {
      await reporting(opts, async () => {
        const doc = await withAgent(opts, (c) => c.request('inquire', { owner: opts.owner }));
        if (opts.json) printJson(doc);
        else {
          process.stdout.write(`owner ${doc.owner.name} (${doc.owner.uuid}) on ${doc.host}, ${doc.liveness}-bound\n`);
          printTable(doc.locks, GRANT_COLUMNS);
        }
      });
    });
}
