import { defineConfig } from 'vitest/config';

// End-to-end tests: Debian's Chromium, driven by playwright-core, against the real
// image-url-server (`demo`: the dev origin and the server in one process).
export default defineConfig({
  test: {
    include: ['e2e/**/*.test.ts'],
    environment: 'node',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
