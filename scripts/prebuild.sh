#!/usr/bin/env bash
# Builds the prebuilt binary that the npm package ships:
#   prebuilds/<platform>-<arch>/step-seg.<libc>.node
# with prebuildify (Node-API: one file for every Node version; stripped; tagged with the libc so that a
# glibc build is never picked on musl) driving cmake-js through scripts/cmake-js-shim.cjs. The CUDA
# backend is compiled in when nvcc is on the PATH (STEP_SEG_CUDA=OFF: CPU only).
#
# The build runs in a temporary copy of package.json, CMakeLists.txt and native/ (the working tree as
# it is now), so the local build/ folder is left alone; node-gyp-build prefers build/Release to
# prebuilds/ when both exist, so checks of the prebuilt file set PREBUILDS_ONLY=1.
#   bash scripts/prebuild.sh            # extra arguments go to prebuildify
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ ! -x node_modules/.bin/prebuildify ]; then
  echo "prebuild.sh: prebuildify is not installed: run npm install (it is a devDependency)" >&2
  exit 1
fi
platform=$(node -p process.platform)
arch=$(node -p process.arch)
stage=$(mktemp -d "${TMPDIR:-/tmp}/step-seg-prebuild.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -R package.json CMakeLists.txt native "$stage/"
ln -s "$root/node_modules" "$stage/node_modules"

echo "prebuild.sh: nvcc: $(command -v nvcc || echo 'not found (CPU-only binary)')"
rm -rf "prebuilds/$platform-$arch"
start=$(date +%s)
npx --no-install prebuildify --napi --strip --tag-libc \
  --cwd "$stage" --out "$root" --node-gyp "$root/scripts/cmake-js-shim.cjs" "$@"
echo "prebuild.sh: built in $(( $(date +%s) - start )) s"

# The file node-gyp-build picks from prebuilds/ (build/ ignored), and that it loads and answers.
PREBUILDS_ONLY=1 node -e '
  const file = require("node-gyp-build").resolve(".");
  const b = require(file);
  const size = require("fs").statSync(file).size;
  b.probeCuda().then((p) => {
    console.log(`prebuild.sh: ${require("path").relative(".", file)}: ${(size / 2 ** 20).toFixed(1)} MiB, ` +
      `cpu ${JSON.stringify(b.cpuInfo())}, CUDA backend ${p.compiled ? "compiled in" : "not compiled in"}` +
      (p.compiled ? ` (runtime ${p.runtimeVersion}; here: ${p.usable ? p.name : p.reason})` : ""));
  });'
if command -v ldd > /dev/null; then
  echo "prebuild.sh: shared libraries it needs:"
  ldd prebuilds/"$platform-$arch"/*.node | sed 's/^/  /'
fi
