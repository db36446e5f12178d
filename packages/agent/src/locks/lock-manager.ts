import { fstatSync, statSync } from 'node:fs';
import { z } from 'zod';
import { asBatonError, BatonError, decideAcquire, LOCK_MODES, wallTimeIso, type Grant, type LockMode, type ResourceRef, type Token } from '@baton/core';
import { setCloexec } from '../sys/index.js';
import { lockFile, removeIfUnused, unlockFile, type LockedFile, type LockFileOptions } from './lock-file.js';
import type { Lockspace } from './lockspace.js';
import { SharedTokenRecord, type TokenSource } from './token-source.js';

interface Holding {
  token: Token;
  since: string;
  /**
   * The name the owner used for it, so it can release by that name even if the path is gone.
   * One name: an owner can never hold a resource twice (a second acquire is refused).
   */
  requestedAs: string;
}

export type AcquirePlan = PlannedLock[];

interface PlannedLock {
  ref: ResourceRef;
  lockspace: Lockspace;
  identity: string;
  lockPath: string;
  key: string;
}

interface HeldLock {
  key: string;
  lockspace: Lockspace;
  identity: string;
  lockPath: string;
  mode: LockMode;
  file: LockedFile;
  holdings: Map<string, Holding>;
}

/** A held lock as the re-exec state file records it. */
export const LockSnapshotSchema = z.object({
  lockspace: z.string(),
  identity: z.string(),
  lockPath: z.string(),
  mode: z.enum(LOCK_MODES),
  fd: z.number().int().nonnegative(),
  dev: z.string(),
  ino: z.string(),
  holdings: z.array(z.object({ owner: z.string(), token: z.number().int().positive(), since: z.string(), requestedAs: z.string() })).min(1),
});
export type LockSnapshot = z.infer<typeof LockSnapshotSchema>;

/**
 * How long a released indirect lock file is kept before it is removed (if still unused): an
 * acquire of its resource meanwhile opens it rather than creating it, so a grant cycle neither
 * creates nor unlinks a file.
 */
export const UNUSED_LOCK_FILE_KEEP_MS = 5_000;
/** Lock files removed per turn of the event loop, so that a mass release is not one long stall. */
const REMOVALS_PER_TURN = 256;

export interface LockManagerOptions {
  lockspaces: readonly Lockspace[];
  defaultLockspace: string;
  tokens: TokenSource;
  ofd: boolean;
  /** Default UNUSED_LOCK_FILE_KEEP_MS. */
  unusedKeepMs?: number;
  /** An unused lock file could not be removed; it stays, as one left by a crash would (harmless). */
  onRemoveFailed?: (lockPath: string, err: unknown) => void;
}

function grantOf(lock: HeldLock, holding: Holding): Grant {
  return { lockspace: lock.lockspace.name, resource: lock.identity, mode: lock.mode, token: holding.token, lockPath: lock.lockPath, since: holding.since };
}

function inodeKey(dev: bigint, ino: bigint): string {
  return `${dev}:${ino}`;
}

function lockKey(lockspace: Lockspace, identity: string): string {
  return `${lockspace.name}\0${identity}`;
}

/** Indirect lock files are created on demand and removed once unused; direct ones are the images. */
function fileOptions(lockspace: Lockspace, ofd: boolean): LockFileOptions {
  return { create: lockspace.kind === 'indirect', ofd };
}

/**
 * The agent's lock table (libvirt's virLockSpace, seed 000): one open descriptor per locked file,
 * never a second. A request for a held resource is answered from the table without touching the
 * file. Every operation is synchronous, so the table never shows a half-applied request.
 */
export class LockManager {
  private readonly lockspaces = new Map<string, Lockspace>();
  private readonly tokenRecords = new Map<string, SharedTokenRecord>();
  private readonly byKey = new Map<string, HeldLock>();
  /** The same file reached through two lockspaces or two hard links is still one file. */
  private readonly byInode = new Map<string, HeldLock>();
  private readonly byOwner = new Map<string, Set<HeldLock>>();
  private readonly tokens: TokenSource;
  private readonly defaultLockspace: string;
  private readonly ofd: boolean;
  private readonly unusedKeepMs: number;
  private readonly onRemoveFailed: ((lockPath: string, err: unknown) => void) | undefined;
  /** Released indirect lock files not removed yet, oldest release first, with its performance.now(). */
  private readonly unused = new Map<string, number>();
  private removalTimer: NodeJS.Timeout | undefined;

  constructor(opts: LockManagerOptions) {
    for (const ls of opts.lockspaces) {
      this.lockspaces.set(ls.name, ls);
      if (ls.dir !== undefined) this.tokenRecords.set(ls.name, SharedTokenRecord.in(ls.dir, opts.ofd));
    }
    this.tokens = opts.tokens;
    this.defaultLockspace = opts.defaultLockspace;
    this.ofd = opts.ofd;
    this.unusedKeepMs = opts.unusedKeepMs ?? UNUSED_LOCK_FILE_KEEP_MS;
    this.onRemoveFailed = opts.onRemoveFailed;
  }

  lockspace(name: string | undefined): Lockspace {
    const ls = this.lockspaces.get(name ?? this.defaultLockspace);
    if (!ls) throw new BatonError('NO_LOCKSPACE', `no lockspace named "${name}"`, { details: { lockspace: name, known: [...this.lockspaces.keys()] } });
    return ls;
  }

  allLockspaces(): Lockspace[] {
    return [...this.lockspaces.values()];
  }

  get size(): number {
    return this.byKey.size;
  }

  /** All of `refs` for `owner`, or none: the first conflict undoes what this request locked. */
  acquire(owner: string, refs: readonly ResourceRef[]): Grant[] {
    return this.commit(owner, this.plan(owner, refs));
  }

  /**
   * Resolve every resource and check the table: a resource held on this host is refused here,
   * before anything is asked of the cluster. Changes nothing.
   */
  plan(owner: string, refs: readonly ResourceRef[]): AcquirePlan {
    const plan = refs.map((ref) => {
      const lockspace = this.lockspace(ref.lockspace);
      const resolved = lockspace.resolve(ref.name);
      return { ref, lockspace, ...resolved, key: lockKey(lockspace, resolved.identity) };
    });
    const seen = new Set<string>();
    for (const p of plan) {
      if (seen.has(p.key)) throw new BatonError('INVALID_REQUEST', `"${p.ref.name}" is named twice in one request`, { details: { resource: p.identity } });
      seen.add(p.key);
      this.assertFree(owner, p);
    }
    return plan;
  }

  private assertFree(owner: string, p: PlannedLock): void {
    const held = this.byKey.get(p.key) ?? this.heldAtPath(p.lockPath);
    const decision = decideAcquire(held && { mode: held.mode, owners: held.holdings }, p.ref.mode, owner);
    if (decision.kind === 'busy') {
      throw new BatonError('RESOURCE_BUSY', `"${p.identity}" is held ${held!.mode} on this host${decision.reason === 'already-owner' ? ' by this owner already' : ''}`, {
        details: { resource: p.identity, lockspace: p.lockspace.name, heldMode: held!.mode, holders: [...held!.holdings.keys()] },
      });
    }
  }

  /**
   * Take the local locks of a plan. `tokens` come from the cluster (one per resource, in order);
   * without them the host's own token source issues them. The table is checked again: it may have
   * changed while the cluster was asked.
   */
  commit(owner: string, plan: AcquirePlan, tokens?: readonly Token[]): Grant[] {
    if (tokens !== undefined) for (const p of plan) this.assertFree(owner, p);
    const locked: HeldLock[] = [];
    try {
      const since = wallTimeIso();
      const targets = plan.map((p) => {
        const existing = this.byKey.get(p.key);
        if (existing) return existing;
        const file = lockFile(p.lockPath, p.ref.mode, fileOptions(p.lockspace, this.ofd));
        if (!file) {
          throw new BatonError('RESOURCE_BUSY', `"${p.identity}" is locked by another process or host`, {
            details: { resource: p.identity, lockspace: p.lockspace.name, lockPath: p.lockPath },
          });
        }
        const lock: HeldLock = { key: p.key, lockspace: p.lockspace, identity: p.identity, lockPath: p.lockPath, mode: p.ref.mode, file, holdings: new Map() };
        locked.push(lock);
        return lock;
      });
      // Tokens last: a request that fails above consumes none.
      const holdings = targets.map((lock, i) => ({ lock, holding: { token: tokens?.[i] ?? this.issueToken(lock.lockspace), since, requestedAs: plan[i]!.ref.name } }));
      for (const lock of locked) this.index(lock);
      for (const { lock, holding } of holdings) this.hold(lock, owner, holding);
      return holdings.map(({ lock, holding }) => grantOf(lock, holding));
    } catch (err) {
      // Only this request's new locks are undone; nothing is indexed before every step succeeded.
      for (const lock of locked) this.closeLock(lock);
      throw asBatonError(err, 'IO_ERROR');
    }
  }

  /** The table key of a grant, or of a resolved resource (what `retoken` is keyed by). */
  keyOf(grant: Pick<Grant, 'lockspace' | 'resource'>): string {
    return lockKey(this.lockspace(grant.lockspace), grant.resource);
  }

  /** The cluster moved an owner's leases to new tokens (a new session after recovery). */
  retoken(owner: string, tokens: ReadonlyMap<string, Token>): void {
    for (const lock of this.byOwner.get(owner) ?? []) {
      const token = tokens.get(lock.key);
      if (token !== undefined) lock.holdings.get(owner)!.token = token;
    }
  }

  /** Release `refs` (all the owner holds if omitted); every name must be held, or nothing changes. */
  release(owner: string, refs?: readonly ResourceRef[]): Grant[] {
    const mine = this.byOwner.get(owner) ?? new Set<HeldLock>();
    const targets = refs === undefined ? [...mine] : refs.map((ref) => this.findHeld(owner, mine, ref));
    const released: Grant[] = [];
    for (const lock of new Set(targets)) {
      const holding = lock.holdings.get(owner)!;
      released.push(grantOf(lock, holding));
      lock.holdings.delete(owner);
      mine.delete(lock);
      if (lock.holdings.size === 0) this.drop(lock);
    }
    if (mine.size === 0) this.byOwner.delete(owner);
    return released;
  }

  grantsOf(owner: string): Grant[] {
    return [...(this.byOwner.get(owner) ?? [])].map((lock) => grantOf(lock, lock.holdings.get(owner)!));
  }

  holdsAny(owner: string): boolean {
    return (this.byOwner.get(owner)?.size ?? 0) > 0;
  }

  list(): { grant: Grant; owner: string }[] {
    return [...this.byKey.values()].flatMap((lock) => [...lock.holdings].map(([owner, h]) => ({ grant: grantOf(lock, h), owner })));
  }

  snapshot(): LockSnapshot[] {
    return [...this.byKey.values()].map((l) => ({
      lockspace: l.lockspace.name,
      identity: l.identity,
      lockPath: l.lockPath,
      mode: l.mode,
      fd: l.file.fd,
      dev: String(l.file.dev),
      ino: String(l.file.ino),
      holdings: [...l.holdings].map(([owner, h]) => ({ owner, token: h.token, since: h.since, requestedAs: h.requestedAs })),
    }));
  }

  /**
   * Take over descriptors inherited across exec. Every one is checked first (the descriptor is the
   * recorded file, and the path still names that file); any mismatch refuses the whole set, so a
   * table is never half-loaded.
   */
  adopt(snapshots: readonly LockSnapshot[]): void {
    const locks = snapshots.map((s) => {
      const lockspace = this.lockspace(s.lockspace);
      let st;
      try {
        st = fstatSync(s.fd, { bigint: true });
      } catch (err) {
        throw new BatonError('STATE_INVALID', `inherited descriptor ${s.fd} for "${s.identity}" is not open`, { details: { fd: s.fd }, cause: err });
      }
      const pathSt = statSync(s.lockPath, { bigint: true, throwIfNoEntry: false });
      if (String(st.dev) !== s.dev || String(st.ino) !== s.ino || pathSt?.dev !== st.dev || pathSt.ino !== st.ino) {
        throw new BatonError('STATE_INVALID', `inherited descriptor ${s.fd} no longer matches ${s.lockPath}`, { details: { fd: s.fd, lockPath: s.lockPath } });
      }
      const lock: HeldLock = {
        key: lockKey(lockspace, s.identity),
        lockspace,
        identity: s.identity,
        lockPath: s.lockPath,
        mode: s.mode,
        file: { fd: s.fd, dev: st.dev, ino: st.ino },
        holdings: new Map(),
      };
      return { lock, holdings: s.holdings };
    });
    for (const { lock, holdings } of locks) {
      setCloexec(lock.file.fd, true);
      this.index(lock);
      for (const h of holdings) this.hold(lock, h.owner, { token: h.token, since: h.since, requestedAs: h.requestedAs });
    }
  }

  /** Remove every released lock file that is still unused now (the agent stops or re-executes). */
  removeUnusedLockFiles(): void {
    clearTimeout(this.removalTimer);
    this.removalTimer = undefined;
    this.removeUnused(Infinity, Infinity);
  }

  close(): void {
    this.removeUnusedLockFiles();
    for (const record of this.tokenRecords.values()) record.close();
  }

  private issueToken(lockspace: Lockspace): Token {
    const record = this.tokenRecords.get(lockspace.name);
    return record ? record.advance((floor) => this.tokens.issue(floor)) : this.tokens.issue();
  }

  private heldAtPath(lockPath: string): HeldLock | undefined {
    const st = statSync(lockPath, { bigint: true, throwIfNoEntry: false });
    return st && this.byInode.get(inodeKey(st.dev, st.ino));
  }

  private findHeld(owner: string, mine: Set<HeldLock>, ref: ResourceRef): HeldLock {
    const lockspace = this.lockspace(ref.lockspace);
    let key: string | undefined;
    try {
      key = lockKey(lockspace, lockspace.identify(ref.name));
    } catch (err) {
      if (!(err instanceof BatonError && err.code === 'RESOURCE_NOT_FOUND')) throw err;
    }
    const lock = key !== undefined ? this.byKey.get(key) : [...mine].find((l) => l.lockspace === lockspace && l.holdings.get(owner)!.requestedAs === ref.name);
    if (!lock || !mine.has(lock)) {
      throw new BatonError('NOT_HELD', `owner ${owner} does not hold "${ref.name}"`, { details: { resource: ref.name, lockspace: lockspace.name, owner } });
    }
    return lock;
  }

  private index(lock: HeldLock): void {
    this.byKey.set(lock.key, lock);
    this.byInode.set(inodeKey(lock.file.dev, lock.file.ino), lock);
    this.unused.delete(lock.lockPath);
  }

  private hold(lock: HeldLock, owner: string, holding: Holding): void {
    lock.holdings.set(owner, holding);
    let set = this.byOwner.get(owner);
    if (!set) this.byOwner.set(owner, (set = new Set()));
    set.add(lock);
  }

  private drop(lock: HeldLock): void {
    this.byKey.delete(lock.key);
    this.byInode.delete(inodeKey(lock.file.dev, lock.file.ino));
    this.closeLock(lock);
  }

  private closeLock(lock: HeldLock): void {
    unlockFile(lock.file, this.ofd);
    if (lock.lockspace.kind === 'indirect') this.keepUnused(lock.lockPath);
  }

  private keepUnused(lockPath: string): void {
    // Released again: it is kept from now on (re-inserted, so the map stays oldest first).
    this.unused.delete(lockPath);
    this.unused.set(lockPath, performance.now());
    this.scheduleRemoval();
  }

  private scheduleRemoval(): void {
    const oldest = this.unused.values().next();
    if (this.removalTimer !== undefined || oldest.done) return;
    this.removalTimer = setTimeout(
      () => {
        this.removalTimer = undefined;
        this.removeUnused(performance.now() - this.unusedKeepMs, REMOVALS_PER_TURN);
        this.scheduleRemoval();
      },
      Math.max(0, oldest.value + this.unusedKeepMs - performance.now()),
    );
    // Pending removals never keep the process alive: close() does what is left.
    this.removalTimer.unref();
  }

  /** Remove the lock files released before `releasedBefore` (at most `limit` of them) if unused. */
  private removeUnused(releasedBefore: number, limit: number): void {
    let n = 0;
    for (const [lockPath, releasedAt] of this.unused) {
      if (releasedAt > releasedBefore || n++ >= limit) break;
      this.unused.delete(lockPath);
      try {
        // seed 000: a file this agent holds (under another name, or another lockspace) is never opened.
        if (!this.heldAtPath(lockPath)) removeIfUnused(lockPath, this.ofd);
      } catch (err) {
        this.onRemoveFailed?.(lockPath, err);
      }
    }
  }
}
