// Builds the package with esbuild: dist/smart-image.js (the element, one ES module with no
// dependencies, also embedded in image-url-server at /static/smart-image.js), dist/react.js
// (the React wrapper; react stays external) and the type declarations (tsc).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';

rmSync('dist/types', { recursive: true, force: true });
const common = { bundle: true, format: 'esm', target: 'es2020', minify: true, legalComments: 'none', logLevel: 'warning' };
await build({ ...common, entryPoints: ['src/index.ts'], outfile: 'dist/smart-image.js' });
// The wrapper imports the element's own module rather than a second copy of it.
const elementModule = {
  name: 'element-module',
  setup(b) {
    b.onResolve({ filter: /^\.\/index\.js$/ }, () => ({ path: './smart-image.js', external: true }));
  },
};
await build({
  ...common,
  entryPoints: ['src/react.tsx'],
  outfile: 'dist/react.js',
  external: ['react', 'react/jsx-runtime'],
  jsx: 'automatic',
  plugins: [elementModule],
});
execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
