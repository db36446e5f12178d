import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import { BatonError, parseOrRefuse, LEASE_LOSS_POLICIES, LeaseLossSchema, LOCK_MODES, VM_COLUMNS, vmRows, type HostedVm, type LeaseLoss, type LockMode, type VmDefinitionInput } from '@baton/core';
import { CoordinatorClient } from '../coordinator-client.js';
import { printJson, printTable, reporting } from '../output.js';
import { coordinatorOptions, type CoordinatorOpts } from './migrate.js';
import { GRANT_COLUMNS } from './lock.js';

/** The options that say what a VM is: its disks and its lease-loss policy (vm start, vm define). */
interface DefinitionOpts extends CoordinatorOpts {
  disk: string[];
  onLeaseLoss?: string;
  killpath?: string[];
}

interface StartOpts extends DefinitionOpts {
  host: string;
  uuid?: string;
}

const repeated = (value: string, all: string[] = []): string[] => [...all, value];

function definitionOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--disk <path[:mode[:lockspace]]>', `a disk image, an absolute path as the host sees it; mode ${LOCK_MODES.join(' or ')} (default exclusive), lockspace the agent's default unless named (repeat for more)`, repeated)
    .option('--on-lease-loss <policy>', `what the host does to the VM if it loses its leases: ${LEASE_LOSS_POLICIES.join(', ')} (default kill)`)
    .option('--killpath <arg>', 'with --on-lease-loss killpath: the command to run, one argument per --killpath (the VM’s uuid and pid are appended)', repeated);
}

/** `PATH[:mode[:lockspace]]`; the path's own form is checked by the coordinator (absolute). */
function diskOf(spec: string): VmDefinitionInput['disks'][number] {
  const [path = '', mode = '', lockspace, ...rest] = spec.split(':');
  if (rest.length > 0 || (mode !== '' && !(LOCK_MODES as readonly string[]).includes(mode)) || lockspace === '') {
    throw new BatonError('INVALID_REQUEST', `--disk "${spec}" is not PATH[:mode[:lockspace]] (mode ${LOCK_MODES.join(' or ')})`, { details: { disk: spec } });
  }
  return { path, ...(mode === '' ? {} : { mode: mode as LockMode }), ...(lockspace === undefined ? {} : { lockspace }) };
}

function leaseLossOf(opts: DefinitionOpts): LeaseLoss | undefined {
  if (opts.onLeaseLoss === undefined && opts.killpath === undefined) return undefined;
  return parseOrRefuse(LeaseLossSchema, { policy: opts.onLeaseLoss, killpath: opts.killpath }, `--on-lease-loss ${opts.onLeaseLoss ?? ''}`, 'INVALID_REQUEST', { onLeaseLoss: opts.onLeaseLoss ?? null });
}

function definitionOf(opts: DefinitionOpts): VmDefinitionInput {
  const onLeaseLoss = leaseLossOf(opts);
  return { disks: opts.disk.map(diskOf), ...(onLeaseLoss === undefined ? {} : { onLeaseLoss }) };
}

function printVm(vm: HostedVm, verb: string): void {
  process.stdout.write(`VM ${vm.name} (${vm.uuid}) ${verb} on ${vm.host}, pid ${vm.pid}\n`);
  if (vm.locks.length > 0) printTable(vm.locks, GRANT_COLUMNS);
}

/** `baton vm start|list|define|destroy`: VMs on any host of the cluster, through the coordinator. */
export function registerVmCommands(program: Command): void {
  const vm = program.command('vm').description('start, list, redefine or destroy VMs on the cluster’s hosts, through the coordinator');

  definitionOptions(coordinatorOptions(vm.command('start <name>')))
    .description('start a VM on a host: its agent creates it paused, takes its disks’ leases, then runs it')
    .requiredOption('--host <host>', 'the host to run it on')
    .option('--uuid <uuid>', 'the VM’s uuid (default: a new random one)')
    .action(async (name: string, opts: StartOpts) => {
      await reporting(opts, async () => {
        const started = await CoordinatorClient.from(opts).startVm(opts.host, { uuid: opts.uuid ?? randomUUID(), name, ...definitionOf(opts) });
        if (opts.json) printJson(started);
        else printVm(started, started.state);
      });
    });

  definitionOptions(coordinatorOptions(vm.command('define <vm>')))
    .description('replace a VM’s definition (uuid or name): its whole disk set and its lease-loss policy; staged while it migrates, applied when the migration ends')
    .action(async (target: string, opts: DefinitionOpts) => {
      await reporting(opts, async () => {
        const answer = await CoordinatorClient.from(opts).defineVm(target, definitionOf(opts));
        if (opts.json) printJson(answer);
        else if ('staged' in answer) process.stdout.write(`VM ${target} is migrating: definition staged in migration ${answer.migration}; it applies where the VM runs when the migration ends\n`);
        else printVm(answer.vm, 'redefined');
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
