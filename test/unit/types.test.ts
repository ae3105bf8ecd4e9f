// The published type declarations (dist/*.d.ts) from a consumer's side: a CommonJS and an ES-module
// TypeScript file (test/fixtures/consumer/) and every ```ts block of the README type-check with
// TypeScript 5 and TypeScript 7 (npm's latest; the native compiler), --strict, in a project whose
// tsconfig lists no `types` (TypeScript 7's default) and that holds its own @types/node beside a copy
// of the package, as an installed step-seg would be. The consumer files carry @ts-expect-error lines,
// so a declaration that grows too loose (stats.ms as any string key, merge.policy as any string) fails too.
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import { repoRoot } from '../helpers/compare';
import { readmeBlocks } from '../helpers/readme';

const compilers = [
  { name: 'TypeScript 5', tsc: path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), major: 5 },
  { name: 'TypeScript 7', tsc: path.join(repoRoot, 'node_modules', 'typescript7', 'bin', 'tsc'), major: 7 },
];

type Check = { status: number | null; output: string };
const test = suite<{ app: string; files: string[]; checks: Map<string, Promise<Check>> }>('types');

test.before((ctx) => {
  ctx.app = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-types-'));
  // the package as npm installs it: package.json and dist/ (what the declarations need), a real copy
  // so that its `/// <reference types="node" />` resolves from the consumer's node_modules
  const pkg = path.join(ctx.app, 'node_modules', 'step-seg');
  fs.mkdirSync(pkg, { recursive: true });
  fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(pkg, 'package.json'));
  fs.cpSync(path.join(repoRoot, 'dist'), path.join(pkg, 'dist'), { recursive: true });
  fs.mkdirSync(path.join(ctx.app, 'node_modules', '@types'), { recursive: true });
  fs.symlinkSync(path.join(repoRoot, 'node_modules', '@types', 'node'), path.join(ctx.app, 'node_modules', '@types', 'node'), 'dir');
  fs.writeFileSync(path.join(ctx.app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  const files = ['consumer.cts', 'consumer.mts'];
  for (const f of files) fs.copyFileSync(path.join(repoRoot, 'test', 'fixtures', 'consumer', f), path.join(ctx.app, f));
  for (const block of readmeBlocks().filter((b) => b.lang === 'ts')) {
    const name = `readme-line-${block.line}.mts`;
    fs.writeFileSync(path.join(ctx.app, name), block.code);
    files.push(name);
  }
  ctx.files = files;
  const compilerOptions = { strict: true, noEmit: true, module: 'nodenext', target: 'es2022', types: [], skipLibCheck: false };
  fs.writeFileSync(path.join(ctx.app, 'tsconfig.json'), JSON.stringify({ compilerOptions, files }, null, 2));
  // both compilers at once (TypeScript 5 takes most of the time, checking @types/node)
  ctx.checks = new Map();
  for (const { name, tsc } of compilers)
    if (fs.existsSync(tsc))
      ctx.checks.set(
        name,
        new Promise((resolve) =>
          execFile(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: ctx.app, encoding: 'utf8', timeout: 120_000 }, (err, stdout, stderr) =>
            resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }),
          ),
        ),
      );
});
test.after((ctx) => fs.rmSync(ctx.app, { recursive: true, force: true }));

test('the README has TypeScript blocks to check', ({ files }) => {
  assert.ok(files.some((f) => f.startsWith('readme-line-')), 'no ```ts block in README.md');
});

test('dist/index.d.ts references Node\'s types', () => {
  assert.match(fs.readFileSync(path.join(repoRoot, 'dist', 'index.d.ts'), 'utf8'), /^\/\/\/ <reference types="node"/m);
});

for (const { name, tsc, major } of compilers) {
  test(`a --strict consumer type-checks with ${name}`, async ({ checks }) => {
    assert.ok(fs.existsSync(tsc), `${tsc} is missing: npm install (devDependencies typescript and typescript7)`);
    const version = spawnSync(process.execPath, [tsc, '--version'], { encoding: 'utf8' }).stdout.trim();
    assert.match(version, new RegExp(`^Version ${major}\\.`), version);
    const r = await checks.get(name)!;
    assert.is(r.status, 0, `${version}:\n${r.output}`);
  });
}

test.run();
