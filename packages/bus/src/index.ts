export { Bus, type CommandHandler } from './bus.js';
export { BusConfigSchema, Subjects, type BusConfig, type BusConfigInput } from './config.js';
