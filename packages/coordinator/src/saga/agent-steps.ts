import { z } from 'zod';
import { asBatonError, BatonError, VM_COMMANDS, type HostedVm, type MigrationCommand, type MigrationRecord, type MigrationStepReply, type VmCommand, type VmCommandResult, type VmDefinition } from '@baton/core';
import type { Bus } from '@baton/bus';

/**
 * The migration steps agents carry out, as NATS commands keyed by (migration, step, token). Like
 * the etcd steps, a failure is a reply: no answer in time is UNAVAILABLE, and the same command is
 * sent again (every agent step is idempotent by its effect). Also a VM's definition change
 * (`vm.define`), applied directly or at the end of a migration that staged it.
 */
export class AgentSteps {
  constructor(
    private readonly bus: Bus,
    private readonly timeouts: { stepMs: number; sendMs: number },
  ) {}

  async run(record: MigrationRecord, command: MigrationCommand): Promise<MigrationStepReply> {
    if (command.target === 'etcd') throw new BatonError('INTERNAL', `${command.step} is not an agent step`);
    const subject = this.bus.subjects.agent(command.host, `migration.${command.step}`);
    try {
      const raw = await this.bus.request(subject, { key: command.key, record }, { timeoutMs: command.step === 'perform' ? this.timeouts.sendMs : this.timeouts.stepMs });
      const result = VM_COMMANDS.migration.result.parse(raw);
      return { ok: true, ...(result.incoming === undefined ? {} : { incoming: result.incoming }), ...(result.onLeaseLoss === undefined ? {} : { onLeaseLoss: result.onLeaseLoss }) };
    } catch (err) {
      return { ok: false, error: asBatonError(err, 'UNAVAILABLE').toBody() };
    }
  }

  /**
   * One of a host's VM commands, its answer checked against the command's result schema; a
   * failure throws. `deadline`: a step's, a send's for what may wait behind one in the VM's queue
   * or spawns a process, or (unset) the bus's own request deadline.
   */
  async command<C extends Exclude<VmCommand, 'migration'>>(host: string, verb: C, params: z.input<(typeof VM_COMMANDS)[C]['params']>, deadline?: 'step' | 'send'): Promise<VmCommandResult<C>> {
    const timeoutMs = deadline === undefined ? undefined : deadline === 'send' ? this.timeouts.sendMs : this.timeouts.stepMs;
    const raw = await this.bus.request(this.bus.subjects.agent(host, verb), params, timeoutMs === undefined ? {} : { timeoutMs });
    return VM_COMMANDS[verb].result.parse(raw) as VmCommandResult<C>;
  }

  /** Apply a VM's definition on its host; a failure throws. It may wait in the VM's queue behind a start. */
  define(host: string, uuid: string, definition: VmDefinition): Promise<HostedVm> {
    return this.command(host, 'vm.define', { uuid, definition }, 'send');
  }
}
