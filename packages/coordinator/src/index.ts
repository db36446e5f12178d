export { MigrationStore, type StoredMigration } from './store/migration-store.js';
export { EtcdSteps } from './saga/etcd-steps.js';
