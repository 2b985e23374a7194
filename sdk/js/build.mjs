// Builds a JavaScript plugin into a component with the pinned componentize-js:
//   node sdk/js/build.mjs plugins/<name>/component.js plugins/<name>/<name>.wasm
// Run from the repository root: componentize-js maps the current directory as the
// module root, so the entry's relative imports (../../sdk/js/src/...) resolve.
// `http` and `fetch-event` are left out: plugins reach HTTP through the host's
// casework:plugin/http, never wasi:http (which the host does not link).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const [entry, out] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: node sdk/js/build.mjs <entry.js> <out.wasm>');
  process.exit(2);
}
const wit = resolve(dirname(fileURLToPath(import.meta.url)), '../wit');
const { component } = await componentize({
  sourcePath: resolve(entry),
  witPath: wit,
  worldName: 'integration',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
