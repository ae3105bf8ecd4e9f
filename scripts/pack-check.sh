#!/usr/bin/env bash
# The published package works where nothing can be compiled: `npm pack`, then install the tarball into
# an empty folder on a PATH that holds node, npm, npx and sh only (npm runs bins and scripts through
# sh; no compiler, make, cmake, python or nvcc), and there require('step-seg') and import 'step-seg' segment the bundled demo image with the
# prebuilt binary, and `npx step-seg` runs. Prints the tarball's size and file list; exits non-zero on
# any failure. Build the prebuilt binary first (scripts/prebuild.sh).
#   bash scripts/pack-check.sh            # KEEP=1 keeps the temporary folder
# Needs the npm registry (or npm's cache) for the package's dependencies (sharp, node-gyp-build, ...).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() { echo "pack-check: FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $* =="; }

# a prebuilt binary for this platform, newer than the native sources (npm pack's prepack checks it too)
STEP_SEG_PACK_SOURCE_ONLY= node scripts/check-prebuilt.mjs || fail "the prebuilt binary is missing or stale (above)"

work=$(mktemp -d "${TMPDIR:-/tmp}/step-seg-pack.XXXXXX")
if [ "${KEEP:-}" = 1 ]; then echo "pack-check: keeping $work"; else trap 'rm -rf "$work"' EXIT; fi

step "npm pack (runs prepack: the prebuilt binary is there; prepare: lib/ -> dist/)"
npm pack --pack-destination "$work" --json > "$work/pack.json" 2> "$work/pack.log" || { cat "$work/pack.log" >&2; fail "npm pack failed"; }
node - "$work/pack.json" <<'EOF' || exit 1
const [info] = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
const files = info.files.map((f) => f.path);
const mb = (n) => `${(n / 2 ** 20).toFixed(2)} MiB`;
console.log(`tarball ${info.filename}: ${mb(info.size)} (${info.size} bytes) packed, ${mb(info.unpackedSize)} unpacked, ${files.length} files`);
const groups = {};
for (const f of info.files) {
  const g = f.path.includes('/') ? f.path.split('/')[0] + '/' : f.path;
  (groups[g] ??= { n: 0, bytes: 0 }).n++, (groups[g].bytes += f.size);
}
for (const [g, { n, bytes }] of Object.entries(groups)) console.log(`  ${g.padEnd(16)} ${String(n).padStart(3)} files ${(bytes / 1024).toFixed(1).padStart(9)} KiB`);
const must = [/^prebuilds\/[^/]+\/[^/]+\.node$/, /^bin\/step-seg\.mjs$/, /^dist\/index\.js$/, /^dist\/index\.mjs$/, /^dist\/index\.d\.ts$/, /^dist\/pictures\.js$/, /^weights\/default\/model\.safetensors$/, /^weights\/default\/config\.json$/, /^assets\/demo-rocket\.jpg$/, /^binding\.gyp$/, /^native\/addon\/addon\.cpp$/, /^LICENSE$/, /^weights\/LICENSE$/];
const mustNot = [/^test\//, /^build\//, /^node_modules\//, /^\.ci\//, /^\.device\//, /^lib\//, /\.tgz$/, /(^|\/)fixtures\//, /\.onnx$/, /^scripts\/(?!demo\.mjs$)/, /^native\/cuda\//, /^native\/addon\/(cuda|emu)_/, /^CMakeLists\.txt$/];
const missing = must.filter((re) => !files.some((f) => re.test(f)));
const unwanted = files.filter((f) => mustNot.some((re) => re.test(f)));
if (missing.length) console.error(`pack-check: the tarball lacks ${missing.map(String).join(', ')}`);
if (unwanted.length) console.error(`pack-check: the tarball holds files it should not: ${unwanted.join(', ')}`);
if (missing.length || unwanted.length) process.exit(1);
EOF
tarball="$work/$(node -p "require('$work/pack.json')[0].filename")"

step "a PATH with node, npm, npx and sh only"
tools="$work/tools"
mkdir -p "$tools"
for t in node npm npx sh; do
  target=$(command -v "$t") || fail "$t is not on the PATH"
  ln -s "$(readlink -f "$target")" "$tools/$t"
done
for t in cc gcc g++ c++ clang make cmake ninja nvcc python python3; do
  if PATH="$tools" command -v "$t" > /dev/null 2>&1; then fail "$t is reachable on the restricted PATH"; fi
done
echo "PATH=$tools: $(ls "$tools" | tr '\n' ' ')(no compiler, make, cmake, python or nvcc)"
run() { env PATH="$tools" "$@"; }

app="$work/app"
mkdir -p "$app"
cd "$app"
echo '{ "name": "pack-check-app", "version": "1.0.0", "private": true }' > package.json

step "npm install --ignore-scripts <tarball>"
run npm install --ignore-scripts --no-audit --no-fund "$tarball" 2>&1 | grep -v 'Unknown user config' || true
[ -f node_modules/step-seg/package.json ] || fail "step-seg is not installed"
[ ! -e node_modules/step-seg/build ] || fail "the installed package has a build/ folder"

step "require('step-seg') segments the demo image"
run node -e "
  const path = require('path');
  const { loadModel, runtimeInfo, colorize } = require('step-seg');
  const demo = path.join(path.dirname(require.resolve('step-seg/package.json')), 'assets', 'demo-rocket.jpg');
  (async () => {
    const model = await loadModel(undefined, { device: 'cpu' });
    const r = await model.segment(demo);
    const png = await colorize(r, model.config.palette);
    const { binary } = runtimeInfo();
    console.log('require: ' + r.width + 'x' + r.height + ', ' + r.labels.length + ' labels, ' + r.stats.tokens.input + '/' + r.stats.tokens.dense + ' tokens, PNG ' + png.length + ' bytes, binary ' + path.relative(process.cwd(), binary));
    if (r.labels.length !== r.width * r.height || r.width !== 640 || r.height !== 427) process.exit(1);
    if (!/[\\\\/]prebuilds[\\\\/]/.test(binary)) { console.error('not the prebuilt binary: ' + binary); process.exit(1); }
    model.dispose();
  })().catch((e) => { console.error(e); process.exit(1); });
" || fail "require('step-seg') did not segment the demo image"

step "import { loadModel } from 'step-seg' segments the demo image"
run node --input-type=module -e "
  import { loadModel, runtimeInfo } from 'step-seg';
  import { createRequire } from 'node:module';
  import path from 'node:path';
  const require = createRequire(process.cwd() + '/');
  const demo = path.join(path.dirname(require.resolve('step-seg/package.json')), 'assets', 'demo-rocket.jpg');
  const model = await loadModel(undefined, { device: 'cpu' });
  const r = await model.segment(demo, { size: 1024 });
  console.log('import: ' + r.width + 'x' + r.height + ' at size 1024, ' + r.stats.tokens.input + '/' + r.stats.tokens.dense + ' tokens, ' + r.stats.ms.total.toFixed(0) + ' ms, binary ' + path.relative(process.cwd(), runtimeInfo().binary));
  if (r.labels.length !== 640 * 427) process.exit(1);
  model.dispose();
" || fail "import 'step-seg' did not segment the demo image"

step "npx step-seg"
help=$(run npx --no-install step-seg --help) || fail "npx step-seg --help failed"
echo "$help" | head -3
run npx --no-install step-seg --version
run npx --no-install step-seg segment node_modules/step-seg/assets/demo-rocket.jpg --out out --overlay --tokens || fail "npx step-seg segment failed"
ls out
doctor=$(run npx --no-install step-seg doctor) || fail "npx step-seg doctor failed"
echo "$doctor" | sed -n '1,3p'

step "npm install <tarball> with install scripts (node-gyp-build must find the prebuilt binary, not compile)"
app2="$work/app2"
mkdir -p "$app2"
cd "$app2"
echo '{ "name": "pack-check-app2", "version": "1.0.0", "private": true }' > package.json
run npm install --no-audit --no-fund --foreground-scripts "$tarball" 2>&1 | grep -v 'Unknown user config' || true
[ -f node_modules/step-seg/package.json ] || fail "the install with scripts failed"
[ ! -e node_modules/step-seg/build ] || fail "the install script compiled a binary (build/ exists)"
run node -e "const s = require('step-seg'); console.log('scripts on: binary ' + require('path').relative(process.cwd(), s.runtimeInfo().binary))" || fail "require after the install with scripts failed"

echo
echo "pack-check: OK ($(du -h "$tarball" | cut -f1) tarball)"
