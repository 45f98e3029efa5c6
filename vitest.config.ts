import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Native tests share 2 cores: run files one after another so timings and threads stay sane.
    fileParallelism: false,
    pool: 'forks',
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
