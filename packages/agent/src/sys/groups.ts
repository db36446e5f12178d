import { readFileSync } from 'node:fs';
import { BatonError } from '@baton/core';

/** A group name (from /etc/group) or a gid, as a gid. */
export function resolveGroup(group: string | number): number {
  if (typeof group === 'number') return group;
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined) return Number(gid);
  }
  throw new BatonError('INVALID_CONFIG', `socket.group: no group named "${group}" in /etc/group`, { details: { group } });
}
