// The storm: VMs migrated concurrently among every host, then every disk checked for S1/S2 and
// every VM for exactly one running copy where it was last sent; evidence kept when a rule broke.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MigrationRecord } from '@baton/core';
import type { Coordinator } from '@baton/coordinator';
import { checkDisk, MigrationCluster, waitFor } from '../support/index.js';
import { summarize } from './stats.js';
import { cpuTimes } from './sys.js';
import { analyseDone } from './migration-path.js';
import { DIAGNOSTICS_DIR, type StormResult, type Warning, countingLog, migrateOnce, wholeUs } from './migration-rig.js';

/** A storm VM: where its disk is and the hosts it was sent to, in order. */
interface StormVm {
  uuid: string;
  name: string;
  disk: string;
  visited: string[];
}

/** A sim VM process found in /proc. */
interface VmProcess {
  pid: number;
  uuid: string;
  name: string;
  host: string;
}

/**
 * What a failed storm leaves for a person to read, before the cluster is torn down: per VM that
 * broke a rule, its records (timelines), its event log on every host, its disk, and every agent log
 * line and coordinator warning that names it.
 */
async function keepDiagnostics(
  mc: MigrationCluster,
  vms: StormVm[],
  records: MigrationRecord[],
  warnings: Warning[],
  violations: string[],
  dir: string,
): Promise<string> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'violations.txt'), violations.join('\n') + '\n');
  for (const v of vms.filter((x) => violations.some((m) => m.includes(`${x.name}:`) || m.includes(`${x.name} `) || m.includes(`${x.name}.img`)))) {
    const mine = records.filter((r) => r.vm.uuid === v.uuid);
    const ids = new Set(mine.map((r) => r.id));
    const events = Object.fromEntries(
      [...mc.agents.keys()].map((h) => {
        const log = mc.driver(h).eventLog(v.uuid);
        return [h, existsSync(log) ? readFileSync(log, 'utf8') : ''];
      }),
    );
    const agentLines = Object.fromEntries([...mc.agents].map(([h, a]) => [h, a.json.events().filter((e) => JSON.stringify(e).includes(v.uuid) || [...ids].some((id) => JSON.stringify(e).includes(id)))]));
    const coordinator = warnings.filter((w) => [...ids].some((id) => JSON.stringify(w).includes(id)));
    writeFileSync(join(dir, `${v.name}.json`), JSON.stringify({ vm: v, records: mine, events, agents: agentLines, coordinator }, null, 2));
    writeFileSync(join(dir, `${v.name}.img`), readFileSync(v.disk));
  }
  return dir;
}

/** The sim VM processes whose directory is under one of `stateDirs`, from /proc. */
export function vmProcesses(stateDirs: string[]): VmProcess[] {
  const out: VmProcess[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // exited meanwhile
    }
    if (!argv.some((a) => a.endsWith('managed-vm-main.js'))) continue;
    const arg = (flag: string): string => argv[argv.indexOf(flag) + 1] ?? '';
    if (stateDirs.some((d) => arg('--dir').startsWith(`${d}/`))) out.push({ pid: Number(entry), uuid: arg('--uuid'), name: arg('--name'), host: arg('--host') });
  }
  return out;
}

/** A small seeded PRNG (mulberry32): the storm's destinations, random but the same mix each run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `label` names the storm's VMs, disks and diagnostics folder; its VMs are destroyed at the end,
 * so a storm after it starts from the same load. `limitsKind` says which limits `c` runs with.
 */
export async function storm(
  mc: MigrationCluster,
  c: Coordinator,
  hosts: string[],
  opts: { vms: number; perVm: number; label: string; limitsKind: StormResult['limitsKind'] },
  coordLog: ReturnType<typeof countingLog>,
  log: (msg: string) => void,
): Promise<StormResult> {
  // An earlier run's evidence would be taken for this one's.
  const diagnostics = join(DIAGNOSTICS_DIR, opts.label);
  rmSync(diagnostics, { recursive: true, force: true });
  const random = prng(0xba7);
  const vms: StormVm[] = [];
  for (let i = 0; i < opts.vms; i++) {
    const host = hosts[i % hosts.length]!;
    const name = `${opts.label}-${i}`;
    const vm = await mc.startVm(host, name, [`${name}.img`]);
    vms.push({ uuid: vm.uuid, name, disk: mc.disk(`${name}.img`), visited: [host] });
  }
  // Every VM has written under its first token before the storm starts.
  await waitFor(() => vms.every((v) => checkDisk(v.disk).length > 0), { what: 'every storm VM writing', deadlineMs: 20_000 });

  const records: MigrationRecord[] = [];
  const violations: string[] = [];
  const broken = { failed: 0, disks: 0, copies: 0, orphans: 0 };
  const retriesBefore = coordLog.retries();
  let inFlight = 0;
  let maxInFlight = 0;
  const cpu0 = cpuTimes();
  const t0 = performance.now();
  let lastDone = t0;
  // One chain per VM: a VM migrates once at a time; the chains run together.
  await Promise.all(
    vms.map(async (v) => {
      for (let k = 0; k < opts.perVm; k++) {
        const here = v.visited.at(-1)!;
        const others = hosts.filter((h) => h !== here);
        const to = others[Math.floor(random() * others.length)]!;
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        try {
          const record = await migrateOnce(mc, c, v.uuid, to);
          records.push(record);
          if (record.phase === 'done') {
            v.visited.push(to);
            lastDone = performance.now();
          }
          else {
            broken.failed++;
            violations.push(`${v.name} ${here} → ${to} ended ${record.phase} (${record.timeline.map((e) => e.phase + (e.error ? `:${e.error}` : '')).join(' ')})`);
          }
        } catch (err) {
          broken.failed++;
          violations.push(`${v.name} ${here} → ${to}: ${(err as Error).message}`);
          // Its record is still open: every later migration of this VM would be refused.
          break;
        } finally {
          inFlight--;
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const machineCpu = (cpuTimes().machineBusy - cpu0.machineBusy) / seconds;

  // S1/S2 on every disk, and each disk's writers in the order the VM visited its hosts.
  let disksChecked = 0;
  for (const v of vms) {
    try {
      const epochs = checkDisk(v.disk);
      disksChecked++;
      let i = 0;
      for (const e of epochs) {
        while (i < v.visited.length && v.visited[i] !== e.host) i++;
        if (i === v.visited.length) throw new Error(`${v.name}: writer on ${e.host} (token ${e.token}) is out of the order it visited ${v.visited.join(' → ')}`);
        i++;
      }
    } catch (err) {
      broken.disks++;
      violations.push((err as Error).message);
    }
  }
  // Every VM runs on exactly one host, the last it was sent to, with no copy left anywhere else.
  const copies = await c.vms();
  for (const v of vms) {
    const mine = copies.filter((x) => x.uuid === v.uuid);
    const want = v.visited.at(-1)!;
    if (mine.length !== 1 || mine[0]!.host !== want || mine[0]!.state !== 'running') {
      broken.copies++;
      violations.push(`${v.name}: copies ${JSON.stringify(mine.map((x) => [x.host, x.state]))}, expected one running on ${want}`);
    }
  }

  // VM processes no host's driver reaches any more (their sockets taken by another process of
  // the same VM): each one a copy that may still run with an old token.
  const reachable = new Set(copies.map((x) => x.pid));
  const suspects = vmProcesses([...mc.agents.values()].map((a) => a.stateDir)).filter((p) => !reachable.has(p.pid));
  // A second look, host by host: a VM slow to answer a list (1 s per VM) is not an orphan.
  const orphans: typeof suspects = [];
  for (const p of suspects) if ((await mc.driver(p.host).find(p.uuid))?.pid !== p.pid) orphans.push(p);
  broken.orphans = orphans.length;
  for (const o of orphans) violations.push(`orphaned VM process ${o.pid} (${o.name} on ${o.host}): unreachable, not destroyed`);
  if (violations.length > 0) {
    // Every record, the stuck ones too (their drive did not end, so `records` lacks them).
    const all = (await c.store.list()).map((s) => s.record);
    log(`storm: ${violations.length} violation(s); diagnostics in ${await keepDiagnostics(mc, vms, all, coordLog.warnings, violations, diagnostics)}`);
  }
  for (const v of vms) await c.destroyVm(v.uuid).catch((err: unknown) => log(`storm: ${v.name} not destroyed: ${(err as Error).message}`));
  const { done: doneRecords, analysed } = analyseDone(records, mc);
  const done = doneRecords.length;
  const paths = analysed.map((a) => a.path);
  return {
    vms: opts.vms,
    perVm: opts.perVm,
    hosts: hosts.length,
    migrations: opts.vms * opts.perVm,
    done,
    seconds,
    busySeconds: (lastDone - t0) / 1000,
    perSecond: done / ((lastDone - t0) / 1000),
    maxInFlight,
    disksChecked,
    violations,
    broken,
    retries: coordLog.retries() - retriesBefore,
    whole: summarize(records.map(wholeUs)),
    criticalPath: summarize(paths),
    machineCpu,
    limits: c.limits,
    limitsKind: opts.limitsKind,
  };
}
