import { defineConfig } from 'vitest/config';

// Unit tests live beside each package (packages/*/test); integration and fault tests that start
// real processes and servers live in test/. Everything runs from TypeScript sources except the
// processes tests spawn (agents, sim VMs), which run the build in dist/: npm test builds first.
export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/{unit,support,integration,fault}/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: the integration tests start real servers and processes; more files at once
    // would only measure contention.
    maxWorkers: 2,
    setupFiles: ['test/support/failure-report.ts'],
    globalSetup: ['test/support/global-setup.ts'],
  },
});
