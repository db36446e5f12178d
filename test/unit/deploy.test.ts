import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AgentConfigSchema } from '@baton/agent';
import { loadConfig } from '@baton/core';

/** The deploy files use exactly the names the schema accepts, so they cannot drift from it. */
describe('deploy files', () => {
  it('ships an agent config the agent’s schema accepts', () => {
    const path = new URL('../../deploy/config/agent.json', import.meta.url);
    const config = loadConfig(AgentConfigSchema, { file: { path: path.pathname, text: readFileSync(path, 'utf8') }, env: {} });
    expect(config.lockspaces.map((l) => l.name)).toEqual(['images', 'lvm']);
    // A production cluster: etcd over TLS with a client certificate and a user of its own (docs/cluster.md).
    expect(config.etcd?.endpoints.every((e) => e.startsWith('https://'))).toBe(true);
    expect(config.etcd?.tls?.certFile).toBeDefined();
    expect(config.etcd?.auth?.passwordFile).toBeDefined();
  });

  it('starts the agent with that config and reloads it by re-exec', () => {
    const unit = readFileSync(new URL('../../deploy/systemd/baton-agent.service', import.meta.url), 'utf8');
    expect(unit).toContain('ExecStart=/usr/bin/baton agent --config /etc/baton/agent.json');
    expect(unit).toContain('ExecReload=/bin/kill -USR1 $MAINPID');
    expect(unit).toContain('KillMode=process');
    expect(unit).toMatch(/^After=.*network-online\.target/m);
  });
});
