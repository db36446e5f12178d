export { Agent, AGENT_STATES, type AgentLifecycle, type AgentOptions } from './agent.js';
export { AgentConfigSchema, AGENT_DEFAULTS, type AgentConfig, type AgentConfigInput, type LockspaceConfig } from './config.js';
export { AgentClient, type AgentClientOptions } from './client/agent-client.js';
export { createLogger, type Logger } from './logger.js';
export { runAgentProcess } from './main.js';
