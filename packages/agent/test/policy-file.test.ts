import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PolicyFile } from '../src/state/policy-file.js';

const VM = '6f1c1a52-5f0e-4c3b-9d6e-2a7b8c9d0e1f';
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-policy-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function open(host = 'host-a'): { file: PolicyFile; problems: string[] } {
  const problems: string[] = [];
  return { file: new PolicyFile(dir, host, (p) => problems.push(p)), problems };
}

describe('the policy file (a redefined VM’s lease-loss policy, for a restart after a crash)', () => {
  it('keeps what a definition set across a new process, and forgets a VM that left', () => {
    const first = open().file;
    expect(first.get(VM)).toBeUndefined();
    first.set(VM, { policy: 'pause' });
    const second = open();
    expect(second.problems).toEqual([]);
    expect(second.file.get(VM)).toEqual({ policy: 'pause' });
    second.file.delete(VM);
    expect(open().file.get(VM)).toBeUndefined();
  });

  it('ignores, and says so, a file that is not JSON, of an unknown format, or of another host; changes nothing in it until a definition writes', () => {
    for (const [text, problem] of [
      ['{"v":1,"host":"host-a","vms":', 'is not JSON'],
      [JSON.stringify({ v: 1, host: 'host-a', vms: { [VM]: { policy: 'explode' } } }), 'has an unknown format'],
      [JSON.stringify({ v: 1, host: 'host-b', vms: { [VM]: { policy: 'pause' } } }), 'belongs to host host-b'],
    ] as const) {
      writeFileSync(join(dir, 'policies.json'), text);
      const { file, problems } = open();
      expect(problems).toEqual([expect.stringContaining(problem)]);
      expect(file.get(VM)).toBeUndefined();
      expect(readFileSync(join(dir, 'policies.json'), 'utf8')).toBe(text);
    }
  });
});
