// The package as npm sees it: the lockfile matches package.json (so `npm install` in a clone leaves it
// alone), the licence fields and files, allowScripts covering the development tree's install scripts,
// what `npm pack` puts in the tarball (the sources the binding.gyp fallback compiles, no CUDA sources),
// and `npm pack` refusing to pack without a fresh prebuilt binary.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import { repoRoot } from '../helpers/compare';

const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'));
const lock = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package-lock.json'), 'utf8'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

const test = suite<{ tmp: string; packed: string[] }>('package');

test.before((ctx) => {
  ctx.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-package-'));
  // the tarball's file list, without running prepack (tested below) or prepare
  const r = spawnSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`npm pack --dry-run failed: ${r.stderr}`);
  ctx.packed = JSON.parse(r.stdout)[0].files.map((f: { path: string }) => f.path);
});
test.after((ctx) => fs.rmSync(ctx.tmp, { recursive: true, force: true }));

test('package-lock.json describes package.json, so npm install leaves it as it is', () => {
  const root = lock.packages[''];
  for (const key of ['name', 'version', 'license', 'bin', 'dependencies', 'devDependencies', 'engines'])
    assert.equal(root[key], pkg[key], `package-lock.json packages[""].${key}`);
  assert.is(lock.name, pkg.name);
  assert.is(lock.version, pkg.version);
});

test('allowScripts covers every install script of the development tree (no npm 11 notice in a clone)', () => {
  const withScripts = Object.entries(lock.packages as Record<string, { hasInstallScript?: boolean; optional?: boolean }>)
    .filter(([where, p]) => where && p.hasInstallScript)
    .map(([where]) => where.slice(where.lastIndexOf('node_modules/') + 'node_modules/'.length));
  assert.ok(withScripts.includes('sharp'), 'sharp has an install script');
  for (const name of withScripts) assert.type(pkg.allowScripts?.[name], 'boolean', `allowScripts["${name}"]`);
});

test('the licence field is one npm accepts and says where both licences are', () => {
  // npm's rule for new packages: an SPDX expression without LicenseRef, UNLICENSED, or SEE LICENSE IN <file>
  assert.is(pkg.license, 'SEE LICENSE IN LICENSE');
  const licence = fs.readFileSync(path.join(repoRoot, 'LICENSE'), 'utf8');
  assert.match(licence, /Apache License\s+Version 2\.0, January 2004/);
  assert.match(licence, /research and non-commercial\s+use only/);
  assert.match(licence, /weights\/LICENSE/);
  const weights = fs.readFileSync(path.join(repoRoot, 'weights', 'LICENSE'), 'utf8');
  assert.match(weights, /Research and non-commercial use only/);
  assert.match(weights, /CamVid/);
  const config = JSON.parse(fs.readFileSync(path.join(repoRoot, 'weights', 'default', 'config.json'), 'utf8'));
  assert.match(config.license, /research and non-commercial use only/);
});

test('the README says both licences in its Install section', () => {
  const readme = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const install = readme.slice(readme.indexOf('## Install'), readme.indexOf('\n## ', readme.indexOf('## Install') + 1));
  assert.match(install, /Apache-2\.0/);
  assert.match(install, /research and non-commercial use only/);
  assert.match(install, /weights\/LICENSE/);
  assert.match(install, /npm install \S*step-seg-0\.1\.0\.tgz/);
  assert.not.match(readme.slice(0, readme.indexOf('## Install') + 600), /^npm install step-seg$/m, 'the registry install is not the first command');
});

test('the tarball holds the licences and the sources the binding.gyp fallback compiles, and no CUDA sources', ({ packed }) => {
  for (const f of ['LICENSE', 'weights/LICENSE', 'README.md', 'binding.gyp', 'native/addon/addon.cpp', 'weights/default/model.safetensors', 'scripts/demo.mjs'])
    assert.ok(packed.includes(f), f);
  for (const f of packed) {
    assert.not.match(f, /^native\/cuda\//, f);
    assert.not.match(f, /^native\/addon\/(cuda|emu)_/, f);
    assert.not.match(f, /^CMakeLists\.txt$/, f);
  }
  // every source binding.gyp names, and every header they include, transitively
  const gyp = JSON.parse(fs.readFileSync(path.join(repoRoot, 'binding.gyp'), 'utf8'));
  const todo: string[] = [...gyp.targets[0].sources];
  const seen = new Set<string>();
  while (todo.length) {
    const f = path.posix.normalize(todo.pop()!);
    if (seen.has(f)) continue;
    seen.add(f);
    assert.ok(packed.includes(f), `${f} (needed by the binding.gyp build) is not in the tarball`);
    const text = fs.readFileSync(path.join(repoRoot, f), 'utf8');
    // includes under #ifdef STEP_SEG_HAVE_CUDA are not compiled by binding.gyp
    const plain = text.replace(/#ifdef STEP_SEG_HAVE_CUDA[\s\S]*?#endif/g, '');
    for (const m of plain.matchAll(/^\s*#include "([^"]+)"/gm)) todo.push(path.posix.join(path.posix.dirname(f), m[1]));
  }
  assert.ok(seen.size > 30, `${seen.size} files followed`);
});

// A copy of what prepack looks at: package.json, the script, the native sources.
function packTree(tmp: string, name: string): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(path.join(dir, 'scripts'), { recursive: true });
  fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(dir, 'package.json'));
  fs.copyFileSync(path.join(repoRoot, 'scripts', 'check-prebuilt.mjs'), path.join(dir, 'scripts', 'check-prebuilt.mjs'));
  fs.cpSync(path.join(repoRoot, 'native'), path.join(dir, 'native'), { recursive: true });
  return dir;
}
const env = { ...process.env, STEP_SEG_PACK_SOURCE_ONLY: '' };
const checkPrebuilt = (dir: string, extra: Record<string, string> = {}) =>
  spawnSync(process.execPath, [path.join(dir, 'scripts', 'check-prebuilt.mjs')], { cwd: dir, encoding: 'utf8', env: { ...env, ...extra } });

test('npm pack without a prebuilt binary refuses, and says what to run', ({ tmp }) => {
  const dir = packTree(tmp, 'no-binary');
  const r = spawnSync(npm, ['pack', '--dry-run'], { cwd: dir, encoding: 'utf8', env });
  assert.is.not(r.status, 0, 'npm pack succeeded without a prebuilt binary');
  assert.match(r.stderr, /refusing to pack: prebuilds\/[\w-]+\/ holds no prebuilt binary/);
  assert.match(r.stderr, /npm run build:prebuilt/);
});

test('the prepack check passes a fresh binary, refuses a stale one, and packs source-only only when told', ({ tmp }) => {
  const dir = packTree(tmp, 'with-binary');
  const bin = path.join(dir, 'prebuilds', `${process.platform}-${process.arch}`);
  fs.mkdirSync(bin, { recursive: true });
  fs.writeFileSync(path.join(bin, 'step-seg.glibc.node'), 'stand-in');
  const later = new Date(Date.now() + 60_000);
  fs.utimesSync(path.join(bin, 'step-seg.glibc.node'), later, later);
  const fresh = checkPrebuilt(dir);
  assert.is(fresh.status, 0, fresh.stderr);
  const muchLater = new Date(Date.now() + 120_000);
  fs.utimesSync(path.join(dir, 'native', 'cpu', 'gemm.cpp'), muchLater, muchLater);
  const stale = checkPrebuilt(dir);
  assert.is(stale.status, 1);
  assert.match(stale.stderr, /older than native\/cpu\/gemm\.cpp/);
  const sourceOnly = checkPrebuilt(dir, { STEP_SEG_PACK_SOURCE_ONLY: '1' });
  assert.is(sourceOnly.status, 0);
  assert.match(sourceOnly.stderr, /warning: .*compiling the CPU-only addon from source/);
});

test.run();
