export { EtcdSteps } from './saga/etcd-steps.js';
export { AgentSteps } from './saga/agent-steps.js';
export { MigrationDriver, OVERLAPS_SAVE } from './saga/migration-driver.js';
export { Coordinator, type MigrateRequest, type ReplicaInfo } from './coordinator.js';
export { CoordinatorService } from './service.js';
export { CoordinatorConfigSchema, type CoordinatorConfig, type CoordinatorConfigInput } from './config.js';
export { MigrateBodySchema } from './http/http-api.js';
export { handoffWindowMs } from './http/metrics.js';
export type { Log } from './log.js';
