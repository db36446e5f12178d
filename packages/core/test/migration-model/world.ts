import { newMigration, type ErrorCode, type MigrationRecord, type MigrationStep, type Token } from '../../src/index.js';

/**
 * The world the explorer walks: one VM, its source and destination hosts (agent, local locks,
 * VM copy), the VM's lease in etcd, the migration record, the messages in flight and what is left
 * of the fault budget. Plain immutable data: every action returns a new world.
 *
 * One lease stands for all of the VM's resources: every etcd step moves all of them in one
 * transaction and every agent takes all its locks at once (atomic multi-resource acquire), so more
 * keys would only multiply identical states.
 */

export type Role = 'source' | 'destination';
export const ROLES: readonly Role[] = ['source', 'destination'];
export const other = (r: Role): Role => (r === 'source' ? 'destination' : 'source');

export type VmState = 'absent' | 'paused' | 'running';

export interface Host {
  /** The agent process. A crash loses its local locks and in-flight work; its VM keeps running. */
  up: boolean;
  /**
   * The host is gone for good (powered off): its agent never comes back and its session, with every
   * lease on it, ends. What its copy was stays there, where nothing can ever run it.
   */
  lost: boolean;
  vm: VmState;
  /** The token this host's local locks are held with (fcntl on the shared lock file), or null. */
  locks: Token | null;
  /** This copy holds the VM's latest state: no other copy has run since it was sent or ran itself. */
  fresh: boolean;
  /** Version of the definition this copy runs with (0: the one the migration began with). */
  def: number;
  /**
   * The agent process prepared this copy and has handled no command for the VM since: its resume
   * runs on that memory, without reading the lease (the real agent's `vouched`).
   */
  arrived: boolean;
}

export interface Lease {
  /** Null: the key is absent. `third`: another host's VM won the resource. */
  owner: Role | 'third' | null;
  token: Token;
  /** Revision of the last write to the lease or its handoff marker: what commands are conditioned on. */
  rev: Token;
  /** The handoff markers: from begin, from mark, and from the commit until the destination runs the VM (settle). */
  mark: 'none' | 'reserved' | 'handoff' | 'committed';
}

/** An agent command (to `role`) or its reply (from `role`). */
export interface Msg {
  kind: 'cmd' | 'reply';
  role: Role;
  step: MigrationStep;
  token: Token;
  /** Replies only: undefined for success. */
  error?: ErrorCode;
}

export interface Budget {
  loss: number;
  dup: number;
  crashSource: number;
  crashDestination: number;
  failover: number;
  /** Injected step failures: prepare cannot open a lock file, the send fails, resume cannot lock. */
  failure: number;
  /** A definition change arriving at any moment. */
  change: number;
  /** The destination host lost for good (its session, and every lease on it, ends), before it runs the VM. */
  loseDestination: number;
  /**
   * The source host lost for good at any moment, and declared fenced by an operator (`baton host
   * fence`): its session, every lease on it and its copy of the VM end.
   */
  loseSource: number;
  /** An operator's cancel arriving at any moment (`baton cancel`). */
  cancel: number;
}

/** How the system under test departs from the design (mutation tests prove the checker can fail). */
export type Mutation = 'release-before-send' | 'unpause-before-commit' | 'commit-in-two-txns' | 'agents-ignore-tokens' | 'no-resend-on-timeout' | 'wait-for-lost-host' | 'commit-drops-marker' | 'give-back-to-lost-source' | 'cancel-after-commit';

export interface World {
  record: MigrationRecord;
  lease: Lease;
  hosts: Readonly<Record<Role, Host>>;
  net: readonly Msg[];
  /** The coordinator sent the command the record waits for and has no answer yet. */
  awaiting: boolean;
  /** Mutation commit-in-two-txns only: the key was deleted, the put is still to come. */
  pendingPut: boolean;
  /** The newest definition version (1 once a change arrived). */
  defVersion: number;
  budget: Budget;
}

/** The source's grant token for the VM's lease before the migration. */
export const SOURCE_GRANT: Token = 1;

export function initialWorld(budget: Budget): World {
  const record = newMigration(
    {
      id: 'm1',
      vm: { uuid: '6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f', name: 'vm1' },
      source: 'h1',
      destination: 'h2',
      resources: [{ name: '/images/vm1.img', lockspace: 'default', mode: 'exclusive' }],
    },
    0,
  );
  return {
    record,
    lease: { owner: 'source', token: SOURCE_GRANT, rev: SOURCE_GRANT, mark: 'none' },
    hosts: {
      source: { up: true, lost: false, vm: 'running', locks: SOURCE_GRANT, fresh: true, def: 0, arrived: false },
      destination: { up: true, lost: false, vm: 'absent', locks: null, fresh: false, def: 0, arrived: false },
    },
    net: [],
    awaiting: false,
    pendingPut: false,
    defVersion: 0,
    budget,
  };
}

export function withHost(w: World, role: Role, patch: Partial<Host>): World {
  return { ...w, hosts: { ...w.hosts, [role]: { ...w.hosts[role], ...patch } } };
}

export function msgKey(m: Msg): string {
  return `${m.kind}:${m.role}:${m.step}:${m.token}:${m.error ?? 'ok'}`;
}

/** The network is a multiset: kept sorted so equal worlds have equal keys. */
export function withNet(w: World, net: readonly Msg[]): World {
  return { ...w, net: [...net].sort((a, b) => (msgKey(a) < msgKey(b) ? -1 : msgKey(a) > msgKey(b) ? 1 : 0)) };
}

export function hostKey(x: Host): string {
  return `${x.lost ? 'L' : x.up ? 'U' : 'D'}${x.vm[0]}${x.locks ?? '-'}${x.fresh ? 'F' : 's'}${x.def}${x.arrived ? 'A' : ''}`;
}

/** Everything that decides the future, nothing of the past (the record's timeline is left out). */
export function worldKey(w: World): string {
  const t = w.record.tokens;
  const b = w.budget;
  return [
    w.record.phase,
    `${t.begin ?? ''},${t.prepare ?? ''},${t.commit ?? ''},${t.revert ?? ''}`,
    w.record.staged === null ? '' : 'S',
    `${w.lease.owner ?? '-'}${w.lease.token}/${w.lease.rev}${w.lease.mark[0]}`,
    hostKey(w.hosts.source),
    hostKey(w.hosts.destination),
    w.net.map(msgKey).join(','),
    `${w.awaiting ? 'A' : ''}${w.pendingPut ? 'P' : ''}${w.defVersion}`,
    `${b.loss}${b.dup}${b.crashSource}${b.crashDestination}${b.failover}${b.failure}${b.change}${b.loseDestination}${b.loseSource}${b.cancel}`,
  ].join('|');
}
