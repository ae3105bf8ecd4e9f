#!/usr/bin/env bash
# gpu-check.sh: the CUDA checks, run on the GPU machine from the package root. That machine has the
# driver, nvcc, ncu and compute-sanitizer but no node and no network, so the addon is built here and
# carried there with the repository: scripts/device-pack.sh fills .device/ with a stripped node, the
# addon (cmake-js build, CUDA compiled in) and the runtime node_modules, all xz-compressed, and this
# script unpacks them; then carry [".device"] only. (Carrying build/Release and node_modules as they
# are works too.)
# Steps: GPU facts (nvidia-smi), the CUDA op and model tests (uvu files under test/ops or matching "cuda"), the CUDA
# benchmarks (scripts/bench-cuda.ts: our GEMM and attention beside PyTorch's; scripts/bench-cuda-model.ts:
# whole dense ViT-S/B/L forwards beside timm's), then the whole test suite (models on 'auto' run on the GPU); a table of step,
# result and seconds at the end, then the benchmark's table. Logs go to $OUT/gpu-check/ when $OUT is set
# (the device runner's output folder), else bench-out/gpu-check/; the benchmark table to bench-cuda.txt there.
# STEP_SEG_REQUIRE_CUDA=1 is exported: here a test or benchmark that finds no usable GPU fails, never skips.
# Options: --sanitize  also run the CUDA op tests under compute-sanitizer (memcheck; slow).
#
# Profiling one op's kernels (its host launchers open an NVTX range named after the op):
#   ncu --nvtx --nvtx-include "gemm/" --clock-control none --set full -o "$OUT/gemm" \
#       .device/node --import tsx scripts/bench-cuda.ts
# ("attention/", "layernorm/", "patch_gather/" ... likewise; --clock-control none keeps the boost
# clock, so ncu's timings compare with the benchmark's.)
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    *) echo "unknown option: $arg (known: --sanitize)" >&2; exit 2 ;;
  esac
done

export STEP_SEG_REQUIRE_CUDA=1
logs="${OUT:-bench-out}/gpu-check"
mkdir -p "$logs"
rm -f "$logs/bench-cuda.txt"  # never show a table of an earlier run
results=()
failed=0

# run NAME COMMAND...: runs one step, logs it, records "NAME|result|seconds"; never exits the script.
run() {
  local name="$1"; shift
  local start tenths status
  echo; echo "== $name: $* =="
  start=$(date +%s%N)
  set +e
  "$@" 2>&1 | tee "$logs/$name.log"
  status=${PIPESTATUS[0]}
  set -e
  tenths=$(( ($(date +%s%N) - start) / 100000000 ))
  if [ "$status" -eq 0 ]; then results+=("$name|ok|$((tenths / 10)).$((tenths % 10))")
  else results+=("$name|FAILED (exit $status)|$((tenths / 10)).$((tenths % 10))"); failed=1; fi
}
skip() { echo; echo "== $1: skipped: $2 =="; results+=("$1|skipped: $2|-"); }

# What scripts/device-pack.sh packed: the addon and the runtime node_modules, unpacked when missing.
if [ ! -f build/Release/step_seg.node ] && [ -f .device/addon.node.xz ]; then
  mkdir -p build/Release && xz -dc .device/addon.node.xz > build/Release/step_seg.node
fi
if [ ! -d node_modules/tsx ] && [ -f .device/modules.tar.xz ]; then
  xz -dc .device/modules.tar.xz | tar -xf -
fi

# Node: the carried binary, unpacked once; a node on the PATH otherwise.
node_bin=""
if [ -f .device/node.xz ]; then
  xz -dkf .device/node.xz && chmod +x .device/node && node_bin=.device/node
elif [ -x .device/node ]; then
  node_bin=.device/node
elif command -v node >/dev/null 2>&1; then
  node_bin=$(command -v node)
fi

missing=()
[ -n "$node_bin" ] || missing+=(".device/node.xz (no node on this machine)")
[ -f build/Release/step_seg.node ] || missing+=("build/Release/step_seg.node (build with cmake-js and carry build/Release)")
[ -d node_modules/tsx ] || missing+=("node_modules/tsx")
[ -f node_modules/uvu/bin.js ] || missing+=("node_modules/uvu")
command -v nvidia-smi >/dev/null 2>&1 || missing+=("nvidia-smi (no NVIDIA driver?)")
for m in ${missing[@]+"${missing[@]}"}; do echo "missing: $m"; done

if command -v nvidia-smi >/dev/null 2>&1; then
  run gpu nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
else
  skip gpu "no nvidia-smi"
fi

if [ -n "$node_bin" ] && [ -f build/Release/step_seg.node ] && [ -d node_modules/tsx ] && [ -f node_modules/uvu/bin.js ]; then
  run probe "$node_bin" --import tsx -e "import('./lib/index.ts').then(async (s) => { console.log(s.runtimeInfo?.()); console.log('cuda:', await s.cudaStatus?.()); })"
  cuda_tests='(^ops/|cuda).*\.test\.ts$' # test/ops: each op's CPU tests and its CUDA comparisons
  if find test \( -path 'test/ops/*' -o -path '*cuda*' \) -name '*.test.ts' | grep -q .; then
    run tests "$node_bin" --import tsx node_modules/uvu/bin.js test "$cuda_tests"
    if [ "$sanitize" -eq 1 ]; then
      if command -v compute-sanitizer >/dev/null 2>&1; then
        run sanitize compute-sanitizer --tool memcheck --error-exitcode 1 "$node_bin" --import tsx node_modules/uvu/bin.js test "$cuda_tests"
      else
        skip sanitize "no compute-sanitizer"
      fi
    fi
  else
    skip tests "no *.test.ts under test/ops or with cuda in its path under test/"
  fi
  if [ -f scripts/bench-cuda.ts ]; then
    run bench "$node_bin" --import tsx scripts/bench-cuda.ts --out "$logs/bench-cuda.txt"
  else
    skip bench "scripts/bench-cuda.ts does not exist yet"
  fi
  run model-bench "$node_bin" --import tsx scripts/bench-cuda-model.ts --step --out "$logs/bench-cuda-model.txt"
  run suite "$node_bin" --import tsx node_modules/uvu/bin.js test "\.test\.ts$"
else
  skip probe "node, the addon or node_modules missing (above)"
  skip tests "node, the addon or node_modules missing (above)"
  skip bench "node, the addon or node_modules missing (above)"
  skip model-bench "node, the addon or node_modules missing (above)"
  skip suite "node, the addon or node_modules missing (above)"
fi

echo
printf '%-10s %-56s %8s\n' step result seconds
for r in ${results[@]+"${results[@]}"}; do
  IFS='|' read -r name result secs <<<"$r"
  printf '%-10s %-56s %8s\n' "$name" "$result" "$secs"
done
[ -f "$logs/bench-cuda.txt" ] && { echo; cat "$logs/bench-cuda.txt"; }
[ -f "$logs/bench-cuda-model.txt" ] && { echo; cat "$logs/bench-cuda-model.txt"; }
echo "logs: $logs"
[ "$failed" -eq 0 ] && [ "${#missing[@]}" -eq 0 ]
