export * from './errors.js';
export * from './model.js';
export * from './fencing.js';
export * from './lockspace.js';
export * from './clock.js';
export * from './config.js';
export * from './wire/envelope.js';
export * from './wire/agent-api.js';
