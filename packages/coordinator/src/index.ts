export { MigrationStore, type StoredMigration } from './store/migration-store.js';
