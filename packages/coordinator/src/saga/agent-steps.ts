import { asBatonError, BatonError, VM_COMMANDS, type HostedVm, type MigrationCommand, type MigrationRecord, type MigrationStepReply, type VmDefinition } from '@baton/core';
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

  /** Apply a VM's definition on its host; a failure throws. It may wait in the VM's queue behind a start: the send's deadline. */
  async define(host: string, uuid: string, definition: VmDefinition): Promise<HostedVm> {
    const raw = await this.bus.request(this.bus.subjects.agent(host, 'vm.define'), { uuid, definition }, { timeoutMs: this.timeouts.sendMs });
    return VM_COMMANDS['vm.define'].result.parse(raw);
  }
}
