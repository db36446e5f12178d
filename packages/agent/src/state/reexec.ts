import { unlinkSync } from 'node:fs';
import { wallTimeIso } from '@baton/core';
import type { SocketServer } from '../api/socket-server.js';
import type { LockManager } from '../locks/lock-manager.js';
import type { Logger } from '../logger.js';
import type { OwnerRecord } from '../owners/owner-registry.js';
import { setCloexec } from '../sys/index.js';
import { carriedState, processIdentity, REEXEC_ENV, STATE_MAGIC, STATE_VERSION, stateFilePath, writeState, type AgentState } from './state-file.js';

export interface ReexecInputs {
  stateDir: string;
  generation: number;
  locks: LockManager;
  nextToken: number;
  owners: OwnerRecord[];
  server: SocketServer;
  log: Logger;
  cluster: AgentState['cluster'];
}

/**
 * Write the state, let every lock, the listening socket and each client connection survive
 * exec (clear close-on-exec), and execve the same program with the same argv. The pid does not
 * change, so classic POSIX locks survive as well as OFD locks. All of it runs synchronously:
 * nothing can change between the snapshot and the exec.
 *
 * Returns only by throwing, with every descriptor as it was and the agent still serving.
 */
export function reexecImage(inputs: ReexecInputs): void {
  const live = inputs.server.connections().filter((c) => !c.isClosed);
  const state: AgentState = {
    magic: STATE_MAGIC,
    version: STATE_VERSION,
    ...processIdentity(),
    generation: inputs.generation,
    writtenAt: wallTimeIso(),
    listenFd: inputs.server.listenFd(),
    nextConnectionId: inputs.server.nextConnectionId,
    nextToken: inputs.nextToken,
    owners: inputs.owners,
    connections: live.map((c) => ({
      id: c.id,
      fd: c.fd(),
      ...(c.ownerUuid === undefined ? {} : { ownerUuid: c.ownerUuid }),
      restricted: c.restricted,
      ...(c.peer === undefined ? {} : { peer: c.peer }),
      ...carriedState(c.carry()),
    })),
    locks: inputs.locks.snapshot(),
    ...(inputs.cluster === undefined ? {} : { cluster: inputs.cluster }),
  };
  const fds = [state.listenFd, ...state.connections.map((c) => c.fd), ...state.locks.map((l) => l.fd)];
  writeState(inputs.stateDir, state);
  try {
    for (const fd of fds) setCloexec(fd, false);
    inputs.log.info({ locks: state.locks.length, connections: state.connections.length, generation: state.generation }, 're-executing');
    if (typeof process.execve !== 'function') throw new Error('process.execve needs Node 22.15 or newer');
    const argv = [process.execPath, ...process.execArgv, ...process.argv.slice(1)];
    process.execve(process.execPath, argv, { ...process.env, [REEXEC_ENV]: String(process.pid) });
  } catch (err) {
    for (const fd of fds) setCloexec(fd, true);
    unlinkSync(stateFilePath(inputs.stateDir));
    throw err;
  }
}
