// binding.gyp (the CPU-only fallback npm runs when no prebuilt binary fits) and CMakeLists.txt (the
// authoritative build) list their sources separately: they must compile the same files for the CPU
// build, so that neither drifts. Two checks: binding.gyp against the source tree as CMakeLists.txt's
// globs read it (native/core/*.cpp, device_none.cpp included since a CPU build has no CUDA backend;
// native/cpu/*.cpp; native/addon/*.cpp but the CUDA and emulator bindings, cuda_*.cpp and emu_*.cpp),
// and binding.gyp against what CMake itself would compile for -DSTEP_SEG_CUDA=OFF (a configure in a
// temporary folder, its sources read from the CMake file API).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { repoRoot } from '../helpers/compare';
import { skip } from '../helpers/skip';

function gypSources(): string[] {
  const gyp = JSON.parse(fs.readFileSync(path.join(repoRoot, 'binding.gyp'), 'utf8'));
  const targets = gyp.targets.filter((t: { target_name: string }) => t.target_name === 'step_seg');
  assert.is(targets.length, 1, 'binding.gyp has one step_seg target');
  return [...targets[0].sources].sort();
}

const cppIn = (dir: string) =>
  fs
    .readdirSync(path.join(repoRoot, dir))
    .filter((f) => f.endsWith('.cpp'))
    .map((f) => `${dir}/${f}`);

test('binding.gyp compiles native/core/*.cpp, native/cpu/*.cpp and the CPU side of native/addon, nothing else', () => {
  const addon = cppIn('native/addon').filter((f) => !/\/(cuda|emu)_[^/]*$/.test(f));
  assert.ok(addon.includes('native/addon/addon.cpp'), 'the CPU build needs native/addon/addon.cpp');
  const want = [...cppIn('native/core'), ...cppIn('native/cpu'), ...addon].sort();
  assert.ok(want.includes('native/core/device_none.cpp'), 'the CPU build needs native/core/device_none.cpp');
  assert.equal(gypSources(), want);
});

test("binding.gyp's sources are what CMake compiles for the CPU build (-DSTEP_SEG_CUDA=OFF)", (ctx) => {
  const version = spawnSync('cmake', ['--version'], { encoding: 'utf8' });
  if (version.status !== 0) return skip(ctx, 'cmake is not on the PATH');
  const build = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-cmake-'));
  try {
    // the file API: an empty query file asks the configure to write the code model
    const query = path.join(build, '.cmake', 'api', 'v1', 'query');
    fs.mkdirSync(query, { recursive: true });
    fs.writeFileSync(path.join(query, 'codemodel-v2'), '');
    const r = spawnSync('cmake', ['-S', repoRoot, '-B', build, '-DSTEP_SEG_CUDA=OFF', '-DCMAKE_BUILD_TYPE=Release'], {
      encoding: 'utf8',
    });
    assert.is(r.status, 0, `cmake configure failed:\n${r.stdout}\n${r.stderr}`);
    const reply = path.join(build, '.cmake', 'api', 'v1', 'reply');
    const read = (f: string) => JSON.parse(fs.readFileSync(path.join(reply, f), 'utf8'));
    const index = read(fs.readdirSync(reply).find((f) => f.startsWith('index-'))!);
    const codemodel = read(index.objects.find((o: { kind: string }) => o.kind === 'codemodel').jsonFile);
    const ref = codemodel.configurations[0].targets.find((t: { name: string }) => t.name === 'step_seg');
    assert.ok(ref, 'CMake has a step_seg target');
    const target = read(ref.jsonFile);
    const sources = (target.sources as { path: string }[])
      .map((s) => (path.isAbsolute(s.path) ? path.relative(repoRoot, s.path) : s.path).split(path.sep).join('/'))
      .sort();
    assert.equal(gypSources(), sources);
  } finally {
    fs.rmSync(build, { recursive: true, force: true });
  }
});

test('scripts/ and lib/ import nothing from test/ (the case tables and GPU types they share live in scripts/cases and lib/cuda-ops.ts)', () => {
  const files = (dir: string): string[] =>
    fs.readdirSync(path.join(repoRoot, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? files(`${dir}/${e.name}`) : /\.(ts|mts|cts|mjs|cjs|js)$/.test(e.name) ? [`${dir}/${e.name}`] : []);
  const sources = [...files('scripts'), ...files('lib')];
  assert.ok(sources.includes('scripts/bench-cuda.ts') && sources.includes('scripts/cases/random.ts'), 'scripts/ read');
  for (const f of sources) {
    const text = fs.readFileSync(path.join(repoRoot, f), 'utf8');
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|require\s*\(\s*)['"]([^'"]+)['"]/g)) {
      if (!m[1].startsWith('.')) continue;
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(f), m[1]));
      assert.not.ok(target === 'test' || target.startsWith('test/'), `${f} imports ${m[1]} (from test/)`);
    }
  }
});

test.run();
