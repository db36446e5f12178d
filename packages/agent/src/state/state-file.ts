import { readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { asBatonError, BatonError, parseOrRefuse, wallTimeIso } from '@baton/core';
import type { CarriedInput } from '../api/connection.js';
import { LockSnapshotSchema } from '../locks/lock-manager.js';
import { OwnerRecordSchema } from '../owners/owner-registry.js';
import { bootId, processStartTime } from '../sys/index.js';
import { writeFileAtomic } from './atomic-file.js';

/**
 * The live state one agent image hands to the next across execve (libvirt seed 001). It is tied
 * to the process: the pid and start time survive exec, so a file written by any other process
 * (an agent that crashed, a file copied from another host) can never be mistaken for ours.
 */
export const STATE_MAGIC = 'baton-agent-reexec';
export const STATE_VERSION = 1;
/** Set in the environment handed to execve: tells the new image it must find a state file. */
export const REEXEC_ENV = 'BATON_REEXEC_FROM_PID';
/** virtlockd reads at most 10 MB; 10,000 locks with owners take about 4 MB. */
const MAX_STATE_BYTES = 64 * 1024 * 1024;

export const AgentStateSchema = z.strictObject({
  magic: z.literal(STATE_MAGIC),
  version: z.literal(STATE_VERSION),
  pid: z.number().int(),
  startTime: z.number(),
  bootId: z.string(),
  generation: z.number().int().nonnegative(),
  writtenAt: z.string(),
  listenFd: z.number().int().nonnegative(),
  nextConnectionId: z.number().int().positive(),
  nextToken: z.number().int().positive(),
  owners: z.array(OwnerRecordSchema),
  connections: z.array(
    z.object({
      id: z.number().int(),
      fd: z.number().int().nonnegative(),
      ownerUuid: z.string().optional(),
      restricted: z.boolean(),
      peer: z.object({ pid: z.number(), uid: z.number(), gid: z.number() }).optional(),
      /** CarriedInput: the requests split but not answered, then the bytes after them (base64). */
      queued: z.array(z.union([z.strictObject({ kind: z.literal('line'), line: z.string() }), z.strictObject({ kind: z.literal('too-long') })])).default([]),
      pending: z.string(),
      discarding: z.boolean().default(false),
    }),
  ),
  locks: z.array(LockSnapshotSchema),
  /** The cluster session and the deadline the previous image computed for it. */
  cluster: z.object({ session: z.string(), validUntil: z.number() }).optional(),
});
export type AgentState = z.infer<typeof AgentStateSchema>;
type ConnectionState = AgentState['connections'][number];

/** A connection's unhandled input as the state file holds it, and back. */
export function carriedState(input: CarriedInput): Pick<ConnectionState, 'queued' | 'pending' | 'discarding'> {
  return { queued: input.queued, pending: input.pending.toString('base64'), discarding: input.discarding };
}

export function carriedInput(state: Pick<ConnectionState, 'queued' | 'pending' | 'discarding'>): CarriedInput {
  return { queued: state.queued, pending: Buffer.from(state.pending, 'base64'), discarding: state.discarding };
}

export function stateFilePath(stateDir: string): string {
  return join(stateDir, 'reexec-state.json');
}

export function processIdentity(): { pid: number; startTime: number; bootId: string } {
  const startTime = processStartTime(process.pid);
  if (startTime === undefined) throw new Error('cannot read this process’s start time from /proc');
  return { pid: process.pid, startTime, bootId: bootId() };
}

export function writeState(stateDir: string, state: AgentState): void {
  writeFileAtomic(stateFilePath(stateDir), JSON.stringify(state));
}

export type InheritedState = { kind: 'none' } | { kind: 'adopt'; state: AgentState } | { kind: 'refused'; error: BatonError; reexec: boolean };

function parse(text: string): AgentState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new BatonError('STATE_INVALID', `state file is not JSON: ${(err as Error).message}`);
  }
  const s = parseOrRefuse(AgentStateSchema, raw, `state file does not match version ${STATE_VERSION}`, 'STATE_INVALID');
  const me = processIdentity();
  if (s.pid !== me.pid || s.startTime !== me.startTime || s.bootId !== me.bootId) {
    throw new BatonError('STATE_INVALID', `state file belongs to process ${s.pid} (started ${s.startTime}, boot ${s.bootId}), not to this one`, {
      details: { filePid: s.pid, pid: me.pid },
    });
  }
  return s;
}

/**
 * Read the state a previous image left, once: the file is moved out of the way whatever it holds,
 * so it is never loaded twice; a refused file is kept beside it for inspection.
 */
export function takeInheritedState(stateDir: string, expectReexec: boolean): InheritedState {
  const path = stateFilePath(stateDir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return expectReexec
      ? { kind: 'refused', reexec: true, error: new BatonError('STATE_INVALID', `re-executed, but no state file at ${path}`) }
      : { kind: 'none' };
  }
  try {
    if (text.length > MAX_STATE_BYTES) throw new BatonError('STATE_INVALID', `state file exceeds ${MAX_STATE_BYTES} bytes`);
    const state = parse(text);
    renameSync(path, `${path}.loaded`);
    return { kind: 'adopt', state };
  } catch (err) {
    const aside = `${path}.rejected-${wallTimeIso().replace(/[:.]/g, '-')}`;
    renameSync(path, aside);
    const error = asBatonError(err, 'STATE_INVALID');
    return { kind: 'refused', reexec: expectReexec, error: new BatonError(error.code, `${error.message} (kept as ${aside})`, { details: { ...error.details, file: aside } }) };
  }
}
