export { Agent, type AgentOptions } from './agent.js';
export { AgentConfigSchema, AGENT_DEFAULTS, type AgentConfig, type AgentConfigInput, type LockspaceConfig } from './config.js';
export { AgentClient, type AgentClientOptions } from './client/agent-client.js';
export { createLogger, type Logger } from './logger.js';
export { runAgentProcess } from './main.js';
export { loadProcessConfig } from './process-config.js';
export { diskEpochs, FencedDisk, formatDiskRecord, MANAGED_VM_ENTRY, readDiskRecords, SIM_VM_ENTRY, SimDriver, type DiskEpoch, type SimFaults, type DiskRecord } from './hypervisor/sim/index.js';
export type { HypervisorDriver, SendOptions } from './hypervisor/driver.js';
export { LOCK_PROBE_ENTRY } from './tools/index.js';
