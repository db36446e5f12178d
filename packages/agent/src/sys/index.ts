export * from './binding.js';
export * from './proc.js';
