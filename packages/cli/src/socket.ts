import { AGENT_DEFAULTS, AgentClient } from '@baton/agent';

/** The agent socket a command talks to: --socket, else BATON_SOCKET_PATH (the agent's own setting), else the default. */
export function socketPathOf(opts: { socket?: string }): string {
  return opts.socket ?? process.env.BATON_SOCKET_PATH ?? AGENT_DEFAULTS.socketPath;
}

export async function withAgent<T>(opts: { socket?: string }, fn: (client: AgentClient) => Promise<T>): Promise<T> {
  await using client = await AgentClient.connect({ socketPath: socketPathOf(opts) });
  // Awaited here, inside the `using` scope: returning the bare promise would close the
  // connection before the command's requests are answered.
  return await fn(client);
}
