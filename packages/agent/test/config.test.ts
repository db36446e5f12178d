import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { AgentConfigSchema, shortHostname } from '../src/config.js';

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

describe('agent configuration: the host name', () => {
  it('takes one DNS label and refuses what would route another host’s NATS commands here ("." , wildcards, spaces)', () => {
    for (const ok of ['host-a', 'hv_01', 'H1', 'x'.repeat(63)]) expect(issuesAt({ hostId: ok }), ok).toEqual([]);
    for (const bad of ['*', '>', 'host-a.example.com', 'host a', '', '-a', 'x'.repeat(64)]) expect(issuesAt({ hostId: bad }), bad).toEqual(['hostId']);
  });

  it('defaults to the machine’s name up to its first "." (hostname -s)', () => {
    expect(shortHostname('hv01.example.com')).toBe('hv01');
    expect(AgentConfigSchema.parse(base).hostId).toBe(shortHostname(hostname()));
  });
});
