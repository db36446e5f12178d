import { hostname } from 'node:os';
import { z } from 'zod';
import { HostIdSchema, LOCKSPACE_KINDS } from '@baton/core';
import { BusConfigSchema } from '@baton/bus';
import { EtcdConfigSchema } from '@baton/etcd';
import { longestSimSocketPath } from './hypervisor/sim/layout.js';

/** The default host name: the machine's, up to its first '.' (as `hostname -s`). */
export function shortHostname(name: string): string {
  return name.split('.')[0]!;
}

/** Defaults, named in one place. */
export const AGENT_DEFAULTS = {
  stateDir: '/var/lib/baton',
  socketPath: '/run/baton/agent.sock',
  socketMode: 0o600,
  httpHost: '127.0.0.1',
  httpPort: 9471,
  /** virtlockd: SIGTERM, then SIGKILL 1.6 s later. */
  ownerTermGraceMs: 1600,
  /** How often pid-bound owners are checked for exit (a stat of /proc per owner). */
  pidPollMs: 100,
  /** Writes to the token counter file are reserved in blocks, so a grant costs no fsync. */
  tokenBlock: 4096,
} as const;

const absolutePath = z.string().startsWith('/', 'must be an absolute path');

/** Linux's sun_path holds 108 bytes with the terminating NUL; a longer path fails only at bind or connect. */
const UNIX_SOCKET_PATH_MAX = 107;

function checkSocketPath(path: string, field: (string | number)[], what: string, ctx: z.RefinementCtx): void {
  const bytes = Buffer.byteLength(path);
  if (bytes > UNIX_SOCKET_PATH_MAX) {
    ctx.addIssue({ code: 'custom', path: field, message: `${what} ${path} is ${bytes} bytes; a UNIX socket path is at most ${UNIX_SOCKET_PATH_MAX} on Linux` });
  }
}

export const LockspaceConfigSchema = z
  .strictObject({
    /** The name clients use (`lockspace` in a request). */
    name: z.string().regex(/^[a-z][a-z0-9_-]{0,63}$/, 'lowercase letters, digits, - and _'),
    /**
     * `indirect`: lock `<dir>/<sha256 of the canonical identity>` (works for any name, and for block
     * devices whose nodes do not carry locks across hosts); `direct`: lock the image file itself.
     */
    kind: z.enum(LOCKSPACE_KINDS),
    /** The lock file directory (indirect only), typically on storage every host shares. */
    dir: absolutePath.optional(),
    /** Resources must resolve inside one of these directories. Empty: any absolute path (indirect only). */
    roots: z.array(absolutePath).default([]),
  })
  .superRefine((ls, ctx) => {
    if (ls.kind === 'indirect' && ls.dir === undefined) ctx.addIssue({ code: 'custom', path: ['dir'], message: 'an indirect lockspace needs a dir' });
    if (ls.kind === 'direct' && ls.dir !== undefined) ctx.addIssue({ code: 'custom', path: ['dir'], message: 'a direct lockspace has no dir' });
    if (ls.kind === 'direct' && ls.roots.length === 0) ctx.addIssue({ code: 'custom', path: ['roots'], message: 'a direct lockspace needs at least one root' });
  });
export type LockspaceConfig = z.infer<typeof LockspaceConfigSchema>;

export const AgentConfigSchema = z
  .strictObject({
    /** This host's name in the cluster. */
    hostId: HostIdSchema.default(shortHostname(hostname())),
    /** Token counter and the re-exec state file. Local to the host, never shared. */
    stateDir: absolutePath.default(AGENT_DEFAULTS.stateDir),
    socket: z
      .strictObject({
        path: absolutePath.default(AGENT_DEFAULTS.socketPath),
        /** File mode of the socket: only its owner (and group, if set) may connect. */
        mode: z.number().int().min(0).max(0o777).default(AGENT_DEFAULTS.socketMode),
        /** A group name or gid allowed to connect (mode must grant it access). */
        group: z.union([z.string().min(1), z.number().int().nonnegative()]).optional(),
      })
      .prefault({}),
    http: z
      .strictObject({
        enabled: z.boolean().default(true),
        host: z.string().default(AGENT_DEFAULTS.httpHost),
        /** 0 picks a free port; the bound port is logged and returned by `hello`. */
        port: z.number().int().min(0).max(65535).default(AGENT_DEFAULTS.httpPort),
      })
      .prefault({}),
    lockspaces: z.array(LockspaceConfigSchema).min(1, 'configure at least one lockspace'),
    /** Lockspace used when a request names none: the first one if unset. */
    defaultLockspace: z.string().optional(),
    owners: z
      .strictObject({
        termGraceMs: z.number().int().positive().default(AGENT_DEFAULTS.ownerTermGraceMs),
        pidPollMs: z.number().int().positive().default(AGENT_DEFAULTS.pidPollMs),
      })
      .prefault({}),
    tokenBlock: z.number().int().min(1).default(AGENT_DEFAULTS.tokenBlock),
    /**
     * The cluster. Without it the agent is a one-host lock daemon (tokens from its own counter);
     * with it every grant is also an etcd lease and its token an etcd revision.
     */
    etcd: EtcdConfigSchema.optional(),
    /** NATS, for the coordinator's commands (VMs and migration steps). Needs `etcd` and `hypervisor`. */
    nats: BusConfigSchema.optional(),
    /**
     * The hypervisor driver that runs this host's VMs. `sim`: each VM a child process writing to
     * its disk images through the fence guard (DESIGN §7); VMs live under `<stateDir>/vms/`.
     */
    hypervisor: z
      .strictObject({
        driver: z.literal('sim'),
        /** How often a sim guest writes to its disks. */
        writeIntervalMs: z.number().int().positive().default(20),
      })
      .optional(),
    /** Prefer open-file-description locks; the agent falls back to classic POSIX locks if the kernel lacks them. */
    ofdLocks: z.boolean().default(true),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .superRefine((cfg, ctx) => {
    const names = cfg.lockspaces.map((l) => l.name);
    names.forEach((n, i) => {
      if (names.indexOf(n) !== i) ctx.addIssue({ code: 'custom', path: ['lockspaces', i, 'name'], message: `duplicate lockspace "${n}"` });
    });
    if (cfg.nats !== undefined && (cfg.etcd === undefined || cfg.hypervisor === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['nats'], message: 'migration commands need an etcd section and a hypervisor' });
    }
    checkSocketPath(cfg.socket.path, ['socket', 'path'], 'the socket', ctx);
    // The sim VMs' sockets live under the state directory: refused here rather than at the first VM.
    if (cfg.hypervisor !== undefined) checkSocketPath(longestSimSocketPath(cfg.stateDir), ['stateDir'], 'too long for the sim VMs’ sockets: the longest,', ctx);
    if (cfg.defaultLockspace !== undefined && !names.includes(cfg.defaultLockspace)) {
      ctx.addIssue({ code: 'custom', path: ['defaultLockspace'], message: `no lockspace named "${cfg.defaultLockspace}"` });
    }
  });
export type AgentConfig = z.infer<typeof AgentConfigSchema>;
export type AgentConfigInput = z.input<typeof AgentConfigSchema>;
