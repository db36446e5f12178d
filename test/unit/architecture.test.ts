import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/** The rules of docs/architecture.md that a reviewer would otherwise have to remember. */
const root = fileURLToPath(new URL('../..', import.meta.url));

function sources(dir: string): { file: string; text: string }[] {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => {
      const file = relative(root, join(e.parentPath, e.name));
      return { file, text: readFileSync(join(root, file), 'utf8') };
    });
}

function importers(files: { file: string; text: string }[], pattern: RegExp): string[] {
  return files.filter((f) => pattern.test(f.text)).map((f) => f.file).sort();
}

const core = sources('packages/core/src');
const agent = sources('packages/agent/src');
const coordinator = sources('packages/coordinator/src');
const etcd = sources('packages/etcd/src');
const bus = sources('packages/bus/src');
const all = [...core, ...etcd, ...bus, ...agent, ...coordinator, ...sources('packages/cli/src')];

describe('architecture', () => {
  it('keeps core pure: it imports no other package and does no I/O', () => {
    expect(importers(core, /from '@baton\//)).toEqual([]);
    expect(importers([...etcd, ...bus], /from '@baton\/(agent|coordinator|cli|etcd|bus)'/)).toEqual([]);
    expect(importers(core, /from 'node:(fs|net|child_process|http|dgram|os)/)).toEqual([]);
  });

  it('keeps the agent and the coordinator apart: they meet only in core', () => {
    expect(importers(agent, /from '@baton\/(coordinator|cli)'/)).toEqual([]);
    expect(importers(coordinator, /from '@baton\/(agent|cli)'/)).toEqual([]);
  });

  it('loads each outside library in one place only', () => {
    expect(importers(all, /baton_sys\.node/)).toEqual(['packages/agent/src/sys/binding.ts']);
    const etcd3 = importers(all, /from '(etcd3|cockatiel)'/);
    expect(etcd3.length).toBeGreaterThan(0);
    expect(etcd3.every((f) => f.startsWith('packages/etcd/src/'))).toBe(true);
    const nats = importers(all, /from '@nats-io\//);
    expect(nats.length).toBeGreaterThan(0);
    expect(nats.every((f) => f.startsWith('packages/bus/src/'))).toBe(true);
    expect(importers(all, /from 'pino'/)).toEqual(['packages/agent/src/logger.ts']);
    expect(importers(all, /from 'prom-client'/)).toEqual(['packages/agent/src/http/http-server.ts', 'packages/agent/src/http/metrics.ts', 'packages/coordinator/src/http/metrics.ts']);
    expect(importers(all, /from 'fastify'/)).toEqual(['packages/agent/src/http/http-server.ts', 'packages/coordinator/src/http/http-api.ts']);
    expect(importers(all, /from 'commander'/).every((f) => f.startsWith('packages/cli/'))).toBe(true);
  });

  it('reads the wall clock only in core/clock.ts: every lease decision uses the injected monotonic clock', () => {
    expect(importers(all, /Date\.now\(|new Date\(/)).toEqual(['packages/core/src/clock.ts']);
  });
});
