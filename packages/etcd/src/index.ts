export { EtcdConfigSchema, keyPrefix, type EtcdConfig, type EtcdConfigInput } from './config.js';
export { EtcdConnection, etcdError } from './connection.js';
export { KeyLayout, prefixEnd } from './keys.js';
export { HostSession, SESSION_PHASES, type SessionLog, type SessionOptions, type SessionPhase } from './session.js';
export { LeaseTable, type HeldLease, type LeaseClaim } from './lease-table.js';
export { ClusterView } from './cluster-view.js';
export { Election, type CampaignOptions, type Leadership } from './election.js';
export { Handoff, HandoffMarkerSchema, type HandoffMarker, type HandoffParty, type HandoffResource } from './handoff.js';
export { parseValue } from './values.js';
