import { describe, expect, it } from 'vitest';
import { findBinary, MissingBinaryError } from './binaries.js';

describe('findBinary', () => {
  it('fails loudly, naming the binary and the apt-get command', () => {
    let caught: unknown;
    try {
      findBinary('baton-no-such-server');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(MissingBinaryError);
    expect(String(caught)).toMatch(/REQUIRED TEST BINARY MISSING: "baton-no-such-server"/);
    expect(String(caught)).toMatch(/apt-get install -y baton-no-such-server/);
  });

  it('names the Debian package of a known server', () => {
    // etcd lives in /usr/bin, which an empty PATH leaves out.
    expect(() => findBinary('etcd', { path: '' })).toThrow(/apt-get install -y etcd-server/);
  });

  it('looks in the sbin directories even when PATH lacks them', () => {
    expect(findBinary('nats-server', { path: '/nonexistent' })).toBe('/usr/sbin/nats-server');
    expect(findBinary('redis-server')).toMatch(/\/redis-server$/);
  });
});
