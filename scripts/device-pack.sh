#!/usr/bin/env bash
# device-pack.sh: fills .device/ (git-ignored) with what scripts/gpu-check.sh needs on the GPU machine,
# which has no node, no compiler and no network, in well under the 64 MiB a call may carry:
#   .device/node.xz           this machine's node binary, stripped, xz-compressed
#   .device/addon.node.xz     the cmake-js build (CUDA compiled in), xz-compressed
#   .device/modules.tar.xz    the runtime subset of node_modules: tsx and esbuild, uvu, sharp and its
#                             libvips, node-gyp-build (no typescript, no onnxruntime)
# Then, with the device tool:  run  command: bash scripts/gpu-check.sh   carry: [".device"]
# (gpu-check.sh unpacks the three when node_modules/tsx or build/Release/step_seg.node is missing).
# Options: --addon FILE (default build/Release/step_seg.node; build it first with npm run build:native).
set -euo pipefail
cd "$(dirname "$0")/.."
addon=build/Release/step_seg.node
[ "${1:-}" = "--addon" ] && addon="$2"
[ -f "$addon" ] || { echo "device-pack: $addon is missing: run npm run build:native first" >&2; exit 1; }
mkdir -p .device
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cp "$(command -v node)" "$tmp/node" && strip "$tmp/node" && xz -T0 -6 -c "$tmp/node" > .device/node.xz
strip -o "$tmp/addon.node" "$addon" 2>/dev/null || cp "$addon" "$tmp/addon.node"
xz -T0 -6 -c "$tmp/addon.node" > .device/addon.node.xz

# The runtime closure of these packages, read from package-lock.json's dependency lists.
node -e '
const lock = require("./package-lock.json").packages;
const want = ["tsx", "uvu", "sharp", "node-gyp-build"];
const seen = new Set();
const visit = (name) => {
  const key = "node_modules/" + name;
  if (seen.has(key) || !lock[key]) return;
  seen.add(key);
  for (const d of Object.keys({ ...lock[key].dependencies, ...lock[key].optionalDependencies })) visit(d);
};
want.forEach(visit);
for (const k of seen) if (require("fs").existsSync(k)) console.log(k);
' > "$tmp/list"
tar -cf - -T "$tmp/list" | xz -T0 -6 > .device/modules.tar.xz
du -ch .device/* | sed 's/^/device-pack: /'
