// Writes the ESM entry (dist/index.mjs and its types) over the CommonJS build, so that
// `import { loadModel } from 'step-seg'` and `require('step-seg')` share one module instance.
const fs = require('node:fs');
const path = require('node:path');

const dist = path.join(__dirname, '..', 'dist');
const cjs = require(path.join(dist, 'index.js'));
const names = Object.keys(cjs).filter((n) => n !== '__esModule' && n !== 'default');
fs.writeFileSync(
  path.join(dist, 'index.mjs'),
  `import cjs from './index.js';\nexport const { ${names.join(', ')} } = cjs;\nexport default cjs;\n`,
);
fs.writeFileSync(path.join(dist, 'index.d.mts'), `export * from './index.js';\n`);
