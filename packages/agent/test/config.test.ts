import { describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '../src/config.js';

const base = { lockspaces: [{ name: 'images', kind: 'indirect', dir: '/srv/locks' }] };
const issuesAt = (input: object): string[] => (AgentConfigSchema.safeParse({ ...base, ...input }).error?.issues ?? []).map((i) => i.path.join('.'));

describe('agent configuration: UNIX socket paths', () => {
  it('takes a socket path of 107 bytes and refuses 108 (sun_path holds 108 with its NUL)', () => {
    expect(issuesAt({ socket: { path: `/${'s'.repeat(106)}` } })).toEqual([]);
    expect(issuesAt({ socket: { path: `/${'s'.repeat(107)}` } })).toEqual(['socket.path']);
  });

  it('counts bytes, not characters', () => {
    expect(issuesAt({ socket: { path: `/${'é'.repeat(53)}` } })).toEqual([]);
    expect(issuesAt({ socket: { path: `/${'é'.repeat(54)}` } })).toEqual(['socket.path']);
  });

  it('with the sim hypervisor, takes a state directory of up to 52 bytes, the most its VMs’ sockets fit under', () => {
    const sim = { hypervisor: { driver: 'sim' } };
    expect(issuesAt({ ...sim, stateDir: `/${'d'.repeat(51)}` })).toEqual([]);
    expect(issuesAt({ ...sim, stateDir: `/${'d'.repeat(52)}` })).toEqual(['stateDir']);
    // Without VMs under it, a long state directory holds no socket.
    expect(issuesAt({ stateDir: `/${'d'.repeat(200)}` })).toEqual([]);
  });
});
