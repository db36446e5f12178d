// The handoff's critical path, read from the VMs' own event logs (source `paused` → destination
// `running`) and split into phases with the record's timeline.
import { existsSync, readFileSync } from 'node:fs';
import { migrationRule, OVERLAPS_SAVE, type MigrationRecord } from '@baton/core';
import { MigrationCluster } from '../support/index.js';

/** The critical path's phases, in order; their sum is the path. */
export const PATH_PHASES = ['stream', 'performReply', 'commit', 'resume'] as const;
export type PathPhase = (typeof PATH_PHASES)[number];
export const PHASE_LABELS: Record<PathPhase, string> = {
  stream: 'paused → VM `sent`: migration stream + ack (source VM)',
  performReply: 'VM `sent` → record `sent`: source agent drops its locks, NATS reply',
  commit: 'commit: one etcd txn (moves the leases, saves the record `sent`)',
  resume: 'resume → VM `running`: NATS request, local locks, unpause (no etcd read: the agent vouches for the copy it prepared)',
};

/** What sits between `paused` and `running`, read from a record's timeline. */
export interface PathCount {
  etcdWrites: number;
  busMessages: number;
  steps: string[];
}

interface VmEvent {
  event: string;
  t: number;
}

/** A VM's events on one host, every life of it (the sim driver keeps the log across destroy). */
class EventLogs {
  private readonly cache = new Map<string, VmEvent[]>();

  constructor(private readonly mc: MigrationCluster) {}

  of(host: string, uuid: string): VmEvent[] {
    const key = `${host}/${uuid}`;
    let events = this.cache.get(key);
    if (!events) {
      const path = this.mc.driver(host).eventLog(uuid);
      events = existsSync(path)
        ? readFileSync(path, 'utf8')
            .split('\n')
            .filter((l) => l.startsWith('{'))
            .map((l) => JSON.parse(l) as VmEvent)
        : [];
      this.cache.set(key, events);
    }
    return events;
  }
}

/** The VM events of one migration's handoff, each found inside the timeline's window for it. */
function handoffEvents(record: MigrationRecord, logs: EventLogs): { paused: number; vmSent: number; running: number; sent: number; committed: number } | undefined {
  const at = (phase: string): number | undefined => record.timeline.find((e) => e.phase === phase)?.atMs;
  const [performing, sent, committed, confirming] = [at('performing'), at('sent'), at('committed'), at('confirming')];
  if (performing === undefined || sent === undefined || committed === undefined || confirming === undefined) return undefined;
  // The events' t is rounded to whole ms: widen each window to whole ms.
  const within = (e: VmEvent, from: number, to: number): boolean => e.t >= Math.floor(from) && e.t <= Math.ceil(to);
  const source = logs.of(record.source, record.vm.uuid);
  const paused = source.find((e) => e.event === 'paused' && within(e, performing, sent));
  const vmSent = source.find((e) => e.event === 'sent' && within(e, performing, sent));
  const running = logs.of(record.destination, record.vm.uuid).find((e) => e.event === 'running' && within(e, committed, confirming));
  return paused && vmSent && running ? { paused: paused.t, vmSent: vmSent.t, running: running.t, sent, committed } : undefined;
}

/**
 * The etcd writes and bus messages between `paused` and `running`, from the timeline. `paused`
 * happens inside the step the source carries out (perform), `running` inside the one the
 * destination carries out (resume): the last phase entered before each event that awaits such a
 * step is where the window opens and closes. The events' times are whole ms, but the phases are
 * milliseconds apart from them (an etcd read and a NATS hop at least), so the half-ms slack
 * cannot pick the wrong phase. Inside the window: the opening step's reply; each phase entered,
 * by its step (an etcd transaction, or an agent's request and reply) and the record's save that
 * follows, unless the next step's transaction carries it (an etcd step) or the step is sent
 * while it is saved (OVERLAPS_SAVE); the closing step's request.
 */
function pathOf(record: MigrationRecord, pausedMs: number, runningMs: number): PathCount {
  const tl = record.timeline;
  const lastAwaiting = (target: 'source' | 'destination', beforeMs: number): number =>
    tl.findLastIndex((e) => e.atMs <= beforeMs + 0.5 && migrationRule(e.phase)?.target === target);
  const open = lastAwaiting('source', pausedMs);
  const close = lastAwaiting('destination', runningMs);
  const out: PathCount = { etcdWrites: 0, busMessages: 0, steps: [] };
  if (open < 0 || close < open) return out;
  out.busMessages++;
  out.steps.push(`${migrationRule(tl[open]!.phase)!.step} reply (NATS)`);
  for (let i = open + 1; i <= close; i++) {
    const rule = migrationRule(tl[i - 1]!.phase)!;
    if (i > open + 1) {
      if (rule.target === 'etcd') {
        out.etcdWrites++;
        out.steps.push(`${rule.step} txn (+ save ${tl[i - 1]!.phase})`);
      } else {
        out.busMessages += 2;
        out.steps.push(`${rule.step} request+reply (NATS)`);
      }
    }
    const next = migrationRule(tl[i]!.phase)!;
    if (next.target !== 'etcd' && !(i === close && OVERLAPS_SAVE.includes(next.step))) {
      out.etcdWrites++;
      out.steps.push(`save ${tl[i]!.phase}`);
    }
  }
  out.busMessages++;
  out.steps.push(`${migrationRule(tl[close]!.phase)!.step} request (NATS)`);
  return out;
}

/** One migration's critical path (µs), its phases (µs) and its timeline path. */
export interface Analysed {
  path: number;
  phases: Record<PathPhase, number>;
  count: PathCount;
}

/** Per migration: the critical path, its phases, its timeline path; undefined if an event is missing. */
function analyse(record: MigrationRecord, logs: EventLogs): Analysed | undefined {
  const ev = handoffEvents(record, logs);
  if (!ev) return undefined;
  const ms = (v: number): number => v * 1000;
  return {
    path: ms(ev.running - ev.paused),
    phases: {
      stream: ms(ev.vmSent - ev.paused),
      performReply: ms(ev.sent - ev.vmSent),
      commit: ms(ev.committed - ev.sent),
      resume: ms(ev.running - ev.committed),
    },
    count: pathOf(record, ev.paused, ev.running),
  };
}

/** The migrations that ended `done`, and those of them whose every event was found, analysed. */
export function analyseDone(records: readonly MigrationRecord[], mc: MigrationCluster): { done: MigrationRecord[]; analysed: Analysed[] } {
  const logs = new EventLogs(mc);
  const done = records.filter((r) => r.phase === 'done');
  return { done, analysed: done.map((r) => analyse(r, logs)).filter((a): a is Analysed => a !== undefined) };
}
