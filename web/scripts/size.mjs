// The size budget of the element: dist/smart-image.js, minified and gzipped, under 6 KB.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET = 6 * 1024;
const raw = readFileSync('dist/smart-image.js');
const gzipped = gzipSync(raw, { level: 9 }).length;
console.log(`dist/smart-image.js: ${raw.length} bytes minified, ${gzipped} bytes gzipped (budget ${BUDGET})`);
if (gzipped >= BUDGET) {
  console.error(`over the size budget by ${gzipped - BUDGET + 1} bytes`);
  process.exit(1);
}
