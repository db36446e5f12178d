import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// `npm run soak`: the long runs, kept out of `npm test` (CI has 20 minutes for everything). The
// same tests as in `npm test`, at soak sizes: 1,000 consecutive re-execs under load with an outside
// prober, 300 random command sequences against the agent model, and the migration explorer with
// two of each fault (1.2 million states) instead of one.
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('..', import.meta.url)),
    include: ['test/integration/reexec.test.ts', 'test/integration/agent-model.test.ts', 'packages/core/test/migration-explorer.test.ts'],
    pool: 'forks',
    maxWorkers: 1,
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 3_600_000,
    env: {
      BATON_SOAK_REEXECS: process.env.BATON_SOAK_REEXECS ?? '1000',
      BATON_SOAK_MODEL_RUNS: process.env.BATON_SOAK_MODEL_RUNS ?? '300',
      BATON_MIGRATION_BUDGET: process.env.BATON_MIGRATION_BUDGET ?? '{"loss":2,"dup":2}',
    },
  },
});
