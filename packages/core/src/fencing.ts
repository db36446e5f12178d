/**
 * Fencing tokens. A token strictly increases per resource across the cluster (an etcd revision,
 * or before the cluster exists a counter persisted by the agent). Tokens are compared here and
 * nowhere else.
 */
export type Token = number;

/** Negative when a is older than b, zero when equal, positive when a is newer. */
export function compareTokens(a: Token, b: Token): number {
  return a === b ? 0 : a < b ? -1 : 1;
}

/** A presented token is stale when a newer one has been issued for the same resource. */
export function isStale(presented: Token, current: Token): boolean {
  return compareTokens(presented, current) < 0;
}

export function maxToken(a: Token, b: Token): Token {
  return compareTokens(a, b) >= 0 ? a : b;
}
