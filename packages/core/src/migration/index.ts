export * from './phases.js';
export * from './record.js';
export * from './machine.js';
export * from './steps.js';
