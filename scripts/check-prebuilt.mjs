#!/usr/bin/env node
// `npm pack` and `npm publish` run this first (the `prepack` script): the package promises a prebuilt
// binary for this platform, so packing refuses, and says what to run, when prebuilds/<platform>-<arch>/
// holds no .node file or holds one older than the native sources. A tarball without it would install
// by compiling the CPU-only addon from source on every machine.
//   STEP_SEG_PACK_SOURCE_ONLY=1 npm pack     packs without the binary on purpose (a warning, exit 0)
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const target = `${process.platform}-${process.arch}`;
const dir = path.join(root, 'prebuilds', target);
const sourceOnly = !!process.env.STEP_SEG_PACK_SOURCE_ONLY && process.env.STEP_SEG_PACK_SOURCE_ONLY !== '0';

// Files under p (a file or a folder), recursively.
function files(p) {
  let stat;
  try {
    stat = fs.statSync(p);
  } catch {
    return [];
  }
  if (!stat.isDirectory()) return [{ file: p, mtimeMs: stat.mtimeMs }];
  return fs.readdirSync(p).flatMap((name) => files(path.join(p, name)));
}

function problem() {
  const binaries = files(dir).filter((f) => f.file.endsWith('.node'));
  if (!binaries.length) return `prebuilds/${target}/ holds no prebuilt binary`;
  const newest = Math.max(...binaries.map((f) => f.mtimeMs));
  const newer = [...files(path.join(root, 'native')), ...files(path.join(root, 'CMakeLists.txt'))].filter((f) => f.mtimeMs > newest);
  if (newer.length)
    return `the prebuilt binary in prebuilds/${target}/ is older than ${newer.slice(0, 3).map((f) => path.relative(root, f.file)).join(', ')}${newer.length > 3 ? ` and ${newer.length - 3} more` : ''}`;
  return undefined;
}

const why = problem();
if (!why) {
  console.error(`check-prebuilt: packing prebuilds/${target}/ (${files(dir).map((f) => path.basename(f.file)).join(', ')})`);
} else if (sourceOnly) {
  console.error(`check-prebuilt: warning: ${why}; STEP_SEG_PACK_SOURCE_ONLY is set, so this tarball installs by compiling the CPU-only addon from source`);
} else {
  console.error(
    [
      `check-prebuilt: refusing to pack: ${why}.`,
      '  Without it the tarball installs by compiling the CPU-only addon from source (binding.gyp) on every machine.',
      '  Run `npm run build:prebuilt` (scripts/prebuild.sh: cmake-js, the CUDA backend compiled in when nvcc is on the PATH),',
      '  then `npm pack` again; or set STEP_SEG_PACK_SOURCE_ONLY=1 to pack a source-only tarball on purpose.',
    ].join('\n'),
  );
  process.exitCode = 1;
}
