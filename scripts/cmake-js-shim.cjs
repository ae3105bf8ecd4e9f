#!/usr/bin/env node
// prebuildify -> cmake-js. prebuildify has no cmake-js backend: it runs the program named by its
// --node-gyp flag as if it were node-gyp,
//   <this> rebuild --target=<node version> --devdir=<header cache> --arch=<arch> --release | --debug
// and then takes build/Release/*.node (build/Debug with --debug). This turns that call into
//   cmake-js rebuild --arch <arch> --CDCMAKE_BUILD_TYPE=Release
// which writes the addon exactly there. The Node version is dropped on purpose: the addon is
// Node-API (package.json "binary.napi_versions"), so cmake-js builds against node-api-headers and the
// binary serves every Node with that N-API level. (cmake-js's own --target means a CMake target.)
// STEP_SEG_CUDA=OFF in the environment builds the CPU-only addon.
'use strict';
const { spawnSync } = require('node:child_process');

const args = process.argv.slice(2);
const value = (name) => {
  const hit = args.find((a) => a.startsWith(`--${name}=`));
  return hit === undefined ? undefined : hit.slice(name.length + 3);
};

if (args[0] !== 'rebuild') {
  console.error(`cmake-js-shim: expected prebuildify's "rebuild ..." call, got: ${args.join(' ')}`);
  process.exit(2);
}
const runtime = value('runtime') ?? 'node';
if (runtime !== 'node') {
  console.error(`cmake-js-shim: runtime ${runtime} is not supported (step-seg prebuilds are Node-API builds for node)`);
  process.exit(2);
}
const debug = args.includes('--debug');
const cmakeJs = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--CDCMAKE_BUILD_TYPE=' + (debug ? 'Debug' : 'Release')];
if (debug) cmakeJs.push('--debug');
const arch = value('arch');
if (arch) cmakeJs.push('--arch', arch);
if (process.env.STEP_SEG_CUDA) cmakeJs.push('--CDSTEP_SEG_CUDA=' + process.env.STEP_SEG_CUDA);

console.error(`cmake-js-shim: ${['cmake-js', ...cmakeJs.slice(1)].join(' ')}   (from: ${args.join(' ')})`);
const r = spawnSync(process.execPath, cmakeJs, { stdio: 'inherit' });
if (r.error) {
  console.error(`cmake-js-shim: could not run cmake-js: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
