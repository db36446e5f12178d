import { performance } from 'node:perf_hooks';
import { successors, type ModelOptions } from './actions.js';
import { checkEdge, checkState, checkTerminal, isTerminal } from './invariants.js';
import { initialWorld, worldKey, type World } from './world.js';

export interface Exploration {
  states: number;
  transitions: number;
  terminals: number;
  depth: number;
  ms: number;
  /** The first violation found, with the steps that lead to it from the start. */
  violation?: { invariant: string; trace: string[] };
}

/**
 * Breadth-first over every reachable world, each visited once (keyed by `worldKey`). Safety is
 * checked in every state and on every transition; then liveness: walking the fault-free edges
 * backwards from the terminal states must reach every state, i.e. from anywhere, deliveries,
 * retries and restarts alone finish the migration.
 */
export function explore(options: ModelOptions): Exploration {
  const started = performance.now();
  const ids = new Map<string, number>();
  const parent: number[] = [];
  const via: number[] = [];
  const labels: string[] = [];
  const labelIds = new Map<string, number>();
  const intern = (l: string) => labelIds.get(l) ?? (labelIds.set(l, labels.push(l) - 1), labels.length - 1);
  const from: number[] = [];
  const to: number[] = [];
  const terminal: number[] = [];
  let transitions = 0;
  let depth = 0;

  const trace = (id: number, last?: string) => {
    const steps: string[] = last === undefined ? [] : [last];
    for (let i = id; parent[i]! >= 0; i = parent[i]!) steps.push(labels[via[i]!]!);
    return steps.reverse();
  };
  const result = (violation?: Exploration['violation']): Exploration => ({
    states: ids.size,
    transitions,
    terminals: terminal.length,
    depth,
    ms: Math.round(performance.now() - started),
    ...(violation === undefined ? {} : { violation }),
  });

  const start = initialWorld(options.budget);
  ids.set(worldKey(start), 0);
  parent.push(-1);
  via.push(intern('start'));
  let frontier: { id: number; world: World }[] = [{ id: 0, world: start }];
  while (frontier.length > 0) {
    const next: typeof frontier = [];
    for (const { id, world } of frontier) {
      const bad = checkState(world) ?? (isTerminal(world) ? checkTerminal(world) : undefined);
      if (bad !== undefined) return result({ invariant: bad, trace: trace(id) });
      if (isTerminal(world)) terminal.push(id);
      for (const edge of successors(world, options)) {
        transitions++;
        const badEdge = checkEdge(world, edge.world, edge.delivered);
        if (badEdge !== undefined) return result({ invariant: badEdge, trace: trace(id, edge.label) });
        const key = worldKey(edge.world);
        let target = ids.get(key);
        if (target === undefined) {
          target = ids.size;
          ids.set(key, target);
          parent.push(id);
          via.push(intern(edge.label));
          next.push({ id: target, world: edge.world });
        }
        if (!edge.fault) from.push(id), to.push(target);
      }
    }
    if (next.length > 0) depth++;
    frontier = next;
  }

  const stuck = unableToFinish(ids.size, from, to, terminal);
  return result(stuck === undefined ? undefined : { invariant: 'liveness: no fault-free path from here reaches an end', trace: trace(stuck) });
}

/** The first state from which no fault-free path reaches a terminal state, if any. */
function unableToFinish(states: number, from: number[], to: number[], terminal: number[]): number | undefined {
  // Reverse adjacency in compressed form: the edges into each state.
  const start = new Int32Array(states + 1);
  for (const t of to) start[t + 1]!++;
  for (let i = 0; i < states; i++) start[i + 1]! += start[i]!;
  const fill = start.slice(0, states);
  const into = new Int32Array(to.length);
  to.forEach((t, e) => (into[fill[t]!++] = from[e]!));

  const reaches = new Uint8Array(states);
  const queue = [...terminal];
  for (const t of terminal) reaches[t] = 1;
  while (queue.length > 0) {
    const s = queue.pop()!;
    for (let e = start[s]!; e < start[s + 1]!; e++) {
      const p = into[e]!;
      if (reaches[p] === 0) (reaches[p] = 1), queue.push(p);
    }
  }
  const stuck = reaches.indexOf(0);
  return stuck < 0 ? undefined : stuck;
}
