import { createHash } from 'node:crypto';

/**
 * The key layout under the cluster's prefix. A resource is keyed by a hash of (lockspace,
 * identity), like lock file names, so any path fits in a key, and all of a resource's keys share
 * its prefix: an exclusive acquire is one range compare (nothing under the prefix).
 *
 *   hosts/<host>                        host record, attached to the host's session
 *   r/<ls>/<hash>/excl                  the exclusive lease
 *   r/<ls>/<hash>/handoff               a migration's handoff marker, on no session (handoff.ts)
 *   r/<ls>/<hash>/shared/<host>/<owner> one shared lease per holder
 *   r/<ls>/<hash>/~held                 with lock-delay on: written with the exclusive lease but on
 *                                       no session, deleted with it by a release; left behind when
 *                                       the holder vanished uncleanly (expiry, operator fence)
 *   audit/fence/<host>/<time>           operator fence declarations, kept
 *   migrations/<id>                     a migration record (migration-store.ts), kept
 *   migrating/<vm uuid>                 the id of the VM's open migration, deleted when it closes
 */
export class KeyLayout {
  constructor(readonly prefix: string) {}

  static resourceHash(lockspace: string, identity: string): string {
    return createHash('sha256').update(lockspace).update('\0').update(identity).digest('hex');
  }

  get hosts(): string {
    return `${this.prefix}hosts/`;
  }

  host(host: string): string {
    return `${this.hosts}${host}`;
  }

  get resources(): string {
    return `${this.prefix}r/`;
  }

  resource(lockspace: string, identity: string): string {
    return `${this.resources}${lockspace}/${KeyLayout.resourceHash(lockspace, identity)}/`;
  }

  static handoffMarker(resource: string): string {
    return `${resource}handoff`;
  }

  /** The unclean-loss marker of an exclusive lease key (`…/excl` → `…/~held`). */
  static heldMarker(exclusiveKey: string): string {
    return `${exclusiveKey.slice(0, -'excl'.length)}~held`;
  }

  static exclusive(resource: string): string {
    return `${resource}excl`;
  }

  static sharedPrefix(resource: string): string {
    return `${resource}shared/`;
  }

  static shared(resource: string, host: string, owner: string): string {
    return `${KeyLayout.sharedPrefix(resource)}${host}/${owner}`;
  }

  get migrations(): string {
    return `${this.prefix}migrations/`;
  }

  migration(id: string): string {
    return `${this.migrations}${id}`;
  }

  migrating(vm: string): string {
    return `${this.prefix}migrating/${vm.toLowerCase()}`;
  }

  /** Every fence declaration made for `host` (a prefix). */
  fenceAudits(host: string): string {
    return `${this.prefix}audit/fence/${host}/`;
  }

  audit(host: string, at: string): string {
    return `${this.fenceAudits(host)}${at}`;
  }
}

/** The end of the range of every key starting with `prefix` (etcd's prefix convention). */
export function prefixEnd(prefix: string): Buffer {
  const buf = Buffer.from(prefix);
  for (let i = buf.length - 1; i >= 0; i--) {
    if (buf[i]! < 0xff) {
      buf[i]!++;
      return buf.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}
