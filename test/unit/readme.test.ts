// Every code block of README.md runs as written: each ```js block as a CommonJS file (what `npm init -y`
// gives), each ```mjs block as an ES module, each ```ts block through tsx as an ES module (and
// types.test.ts type-checks them), in a project folder where step-seg is installed (a link to this
// clone) beside the photos the examples name (copies of the bundled demo image). Blocks use the
// default device, which is the CPU where there is no GPU. Fences are labelled: sh, json and text
// blocks are the only ones not run.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import { repoRoot } from '../helpers/compare';
import { kNotRun, kRunnable, readmeBlocks } from '../helpers/readme';

const blocks = readmeBlocks();
const tsx = pathToFileURL(path.join(repoRoot, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
const kPhotos = ['street.jpg', 'photo.jpg'];

const test = suite<{ app: string }>('readme');

test.before((ctx) => {
  ctx.app = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-readme-'));
  fs.mkdirSync(path.join(ctx.app, 'node_modules'));
  fs.symlinkSync(repoRoot, path.join(ctx.app, 'node_modules', 'step-seg'), 'dir');
  // npm init -y: no "type", so .js files are CommonJS
  fs.writeFileSync(path.join(ctx.app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', main: 'index.js' }, null, 2));
  for (const p of kPhotos) fs.copyFileSync(path.join(repoRoot, 'assets', 'demo-rocket.jpg'), path.join(ctx.app, p));
});
test.after((ctx) => fs.rmSync(ctx.app, { recursive: true, force: true }));

test('every fence is labelled, and only sh, json and text blocks are not run', () => {
  for (const b of blocks)
    assert.ok(([...kRunnable, ...kNotRun] as readonly string[]).includes(b.lang), `README.md:${b.line}: fence language ${JSON.stringify(b.lang)}`);
  const run = blocks.filter((b) => (kRunnable as readonly string[]).includes(b.lang));
  for (const lang of kRunnable) assert.ok(run.some((b) => b.lang === lang), `no \`\`\`${lang} block`);
});

test('the headline example comes as CommonJS and as an ES module', () => {
  const first = blocks.slice(0, 2);
  assert.equal(first.map((b) => b.lang), ['js', 'mjs']);
  assert.match(first[0].code, /require\('step-seg'\)/);
  assert.match(first[1].code, /from 'step-seg'/);
});

test('every runtime export of the package is documented in the API section', () => {
  const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const api = readme.slice(readme.indexOf('\n## API'), readme.indexOf('\n## Models'));
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const names = Object.keys(require(path.join(repoRoot, 'dist', 'index.js'))).filter((n) => n !== '__esModule');
  assert.ok(names.length > 15, names.join(', '));
  for (const name of names)
    assert.match(api, new RegExp(`\`${name}(?![\\w$])`), `${name} is exported but the README's API section does not name it`);
});

test('the README and the demo say the bundled model is trained', () => {
  const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const status = readme.slice(readme.indexOf('## Status'), readme.indexOf('## Install'));
  assert.not.match(status, /not trained|untrained/);
  assert.match(status, /the bundled model was trained with them/);
  assert.not.match(fs.readFileSync(path.join(repoRoot, 'scripts', 'demo.mjs'), 'utf8'), /untrained/);
});

for (const b of blocks.filter((x) => (kRunnable as readonly string[]).includes(x.lang))) {
  test(`README.md:${b.line} (\`\`\`${b.lang}) runs`, ({ app }) => {
    const file = path.join(app, `block-${b.line}.${b.lang === 'js' ? 'js' : b.lang === 'mjs' ? 'mjs' : 'mts'}`);
    fs.writeFileSync(file, b.code);
    const args = b.lang === 'ts' ? ['--import', tsx, file] : [file];
    const r = spawnSync(process.execPath, args, { cwd: app, encoding: 'utf8', timeout: 180_000, env: { ...process.env, NODE_OPTIONS: '' } });
    assert.is(r.status, 0, `README.md:${b.line} exited ${r.status}${r.signal ? ` (${r.signal})` : ''}:\n${r.stdout}\n${r.stderr}`);
  });
}

test.run();
