// The published entry points: require() and import of the built package (dist/), with no TypeScript
// loader, share one module instance, and their type declarations exist.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { repoRoot } from '../helpers/compare';

const run = (args: string[]) =>
  execFileSync(process.execPath, args, { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } }).trim();

test('require("step-seg") segments the demo image with the bundled model', () => {
  const out = run([
    '-e',
    `const { loadModel } = require('step-seg');
     loadModel().then(async (m) => { const r = await m.segment('assets/demo-rocket.jpg', { size: 128 });
       console.log([r.width, r.height, r.labels.length].join(' ')); m.dispose(); });`,
  ]);
  assert.is(out, '640 427 273280');
});

test('import { loadModel } from "step-seg" works and is the same instance as require', () => {
  const out = run([
    '--input-type=module',
    '-e',
    `import { loadModel, BadInputError } from 'step-seg';
     import { createRequire } from 'node:module';
     const cjs = createRequire(process.cwd() + '/')('step-seg');
     console.log([cjs.loadModel === loadModel, cjs.BadInputError === BadInputError].join(' '));`,
  ]);
  assert.is(out, 'true true');
});

test('type declarations for both entries', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'));
  for (const cond of ['import', 'require'])
    for (const key of ['types', 'default']) assert.ok(fs.existsSync(path.join(repoRoot, pkg.exports['.'][cond][key])), `${cond}.${key}`);
  const dts = fs.readFileSync(path.join(repoRoot, 'dist', 'index.d.ts'), 'utf8');
  assert.match(dts, /loadModel/);
});

test.run();
