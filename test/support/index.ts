// The test harness: real servers on random loopback ports, a fault-injecting TCP proxy, and the
// waits and process handling they rest on. Tests import from here, not from the files.
export { DEBIAN_PACKAGES, findBinary, MissingBinaryError, type FindBinaryOptions } from './binaries.js';
export {
  CONTAINERS_ENV,
  containerRuntimeAvailable,
  containersRequested,
  etcd,
  etcdCluster,
  findContainerRuntime,
  nats,
  redis,
  requireContainerRuntime,
  startServers,
  type SelectOptions,
  type ServerSpec,
  type StartedServers,
} from './containers.js';
export { etcdGet, etcdHealth, etcdPut, etcdStatus, type CallOptions, type EtcdStatus } from './etcd-gateway.js';
export {
  ETCD_ELECTION_TIMEOUT_MS,
  ETCD_HEARTBEAT_INTERVAL_MS,
  type EtcdMemberConfig,
} from './etcd-member.js';
export {
  EtcdCluster,
  EtcdMember,
  EtcdServer,
  findLeader,
  type EtcdClusterOptions,
  type EtcdServerOptions,
  type EtcdTlsOptions,
  type LeaderOptions,
} from './etcd-server.js';
export { httpJson, type ClientTls, type HttpJsonOptions, type HttpJsonResponse } from './http-json.js';
export { htmlTable, type HtmlTable } from './html-table.js';
export {
  DEFAULT_START_TIMEOUT_MS,
  isAddressInUse,
  LocalServer,
  ProcessExitedError,
  type LaunchSpec,
  type ReadyOptions,
} from './local-server.js';
export { NatsServer, readNatsInfo, type NatsInfo, type NatsServerOptions } from './nats-server.js';
export { assertLoopback, freePort, freePorts, LOOPBACK } from './ports.js';
export {
  DEFAULT_STOP_GRACE_MS,
  killAllChildrenSync,
  ManagedProcess,
  pidAlive,
  processesMentioning,
  processState,
  threadStates,
  zombieChildren,
  type ExitInfo,
  type ManagedProcessOptions,
} from './process.js';
export { RedisServer, redisCommand, type RedisServerOptions } from './redis-server.js';
export { encodeCommand, parseReply, RespError, type RespValue } from './resp.js';
export { parseLine, TcpClient, type FrameParser } from './tcp-client.js';
export { LinkDirection, TcpProxy, type FlowMode, type TcpProxyOptions } from './tcp-proxy.js';
export { makeTempDir, removeDir } from './temp-dir.js';
export { describe as describeError, waitFor, WaitTimeoutError, within, type Probe, type WaitForOptions } from './wait-for.js';
export { JsonProcess, type JsonEvent } from './json-process.js';
export { AgentProcess, CLI_ENTRY, SharedStorage, simVmRunning, startProbe, startSimVm, tryLockFrom, type AgentProcessOptions, type SimVmOptions } from './agent-process.js';
export { checkDisk, checkRecords, GrantHistory, readDiskRecords, writtenUnder, type DiskEpoch, type DiskRecord, type GrantEvent } from './history.js';
export { monoNow, StampedEvents, type StampedEvent } from './stamped-events.js';
export { staleWrite } from './stale-writer.js';
export { TestPki, type CertPair, type TestCa } from './pki.js';
export { etcdctl, EtcdctlError, type EtcdctlOptions } from './etcdctl.js';
export { clusterName, startClusterHost, TwoHosts, type ClusterHostEtcd } from './cluster-host.js';
export { connectEtcd, openSession, outcomeCode, quietLog, type TestSessionOptions } from './etcd-session.js';
export { MigrationCluster, migrationFile, migrationServers, quiet, type CoordinatorOverrides, type MigrationClusterOptions } from './migration-cluster.js';
export { CoordinatorProcess } from './coordinator-process.js';
