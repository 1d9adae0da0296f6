import { defineConfig } from 'vitest/config';

// Unit tests: the resolver, the fallback chain and the React wrapper's server rendering,
// in Node with fake timers (no browser, no server).
export default defineConfig({
  test: { include: ['test/**/*.test.ts', 'test/**/*.test.tsx'], environment: 'node' },
});
