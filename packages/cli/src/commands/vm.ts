import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import { BatonError, type HostedVm } from '@baton/core';
import { CoordinatorClient } from '../coordinator-client.js';
import { printJson, printTable, reporting } from '../output.js';
import { coordinatorOptions, type CoordinatorOpts } from './migrate.js';

const VM_COLUMNS = ['name', 'uuid', 'host', 'state', 'pid', 'tokens'] as const;
const LEASE_LOSS = ['kill', 'pause'] as const;

interface StartOpts extends CoordinatorOpts {
  host: string;
  disk: string[];
  uuid?: string;
  onLeaseLoss?: string;
}

function vmRows(vms: readonly HostedVm[]): Record<string, unknown>[] {
  return [...vms]
    .sort((a, b) => a.name.localeCompare(b.name) || a.host.localeCompare(b.host))
    .map((v) => ({ name: v.name, uuid: v.uuid, host: v.host, state: v.state, pid: v.pid, tokens: v.locks.length === 0 ? undefined : v.locks.map((l) => l.token).join(',') }));
}

function printVm(vm: HostedVm, verb: string): void {
  process.stdout.write(`VM ${vm.name} (${vm.uuid}) ${verb} on ${vm.host}, pid ${vm.pid}\n`);
  if (vm.locks.length > 0) printTable(vm.locks, ['resource', 'lockspace', 'mode', 'token', 'since']);
}

/** `baton vm start|list|destroy`: VMs on any host of the cluster, through the coordinator. */
export function registerVmCommands(program: Command): void {
  const vm = program.command('vm').description('start, list or destroy VMs on the cluster’s hosts, through the coordinator');

  coordinatorOptions(vm.command('start <name>'))
    .description('start a VM on a host: its agent creates it paused, takes its disks’ leases, then runs it')
    .requiredOption('--host <host>', 'the host to run it on')
    .requiredOption('--disk <path>', 'a disk image, an absolute path as the host sees it (repeat for more)', (path: string, all: string[] = []) => [...all, path])
    .option('--uuid <uuid>', 'the VM’s uuid (default: a new random one)')
    .option('--on-lease-loss <policy>', `what the host does to the VM if it loses its leases: ${LEASE_LOSS.join(' or ')} (default kill)`)
    .action(async (name: string, opts: StartOpts) => {
      await reporting(opts, async () => {
        const policy = opts.onLeaseLoss;
        if (policy !== undefined && !(LEASE_LOSS as readonly string[]).includes(policy)) {
          throw new BatonError('INVALID_REQUEST', `--on-lease-loss must be ${LEASE_LOSS.join(' or ')}, not "${policy}"`, { details: { onLeaseLoss: policy } });
        }
        const started = await CoordinatorClient.from(opts).startVm(opts.host, {
          uuid: opts.uuid ?? randomUUID(),
          name,
          disks: opts.disk.map((path) => ({ path })),
          ...(policy === undefined ? {} : { onLeaseLoss: { policy: policy as (typeof LEASE_LOSS)[number] } }),
        });
        if (opts.json) printJson(started);
        else printVm(started, started.state);
      });
    });

  coordinatorOptions(vm.command('list'))
    .description('every VM every live host runs, with its state and lease tokens')
    .action(async (opts: CoordinatorOpts) => {
      await reporting(opts, async () => {
        const vms = await CoordinatorClient.from(opts).vms();
        if (opts.json) printJson({ vms });
        else printTable(vmRows(vms), VM_COLUMNS);
      });
    });

  coordinatorOptions(vm.command('destroy <vm>'))
    .description('destroy a VM (uuid or name) wherever it runs and release its leases; refused (MIGRATING) while it migrates')
    .action(async (target: string, opts: CoordinatorOpts) => {
      await reporting(opts, async () => {
        const result = await CoordinatorClient.from(opts).destroyVm(target);
        if (opts.json) printJson(result);
        else process.stdout.write(`VM ${result.uuid} destroyed on ${result.host}; ${result.released} lease(s) released\n`);
      });
    });
}
