/**
 * bench-cpu.ts: the dense CPU forward (ViT-S/16 and ViT-B/16 backbones, random weights, 512² and 1024²)
 * timed beside the same network and weights in onnxruntime-node, the Node user's CPU alternative, and
 * optionally in PyTorch, all in one run: ms per image, GFLOP/s and the ratio ort ms / step-seg ms.
 *
 * For each model and size: random weights (seeded) are written as safetensors with timm key names and
 * the config in __metadata__.config; scripts/export_vit_onnx.py (Debian's torch) loads the same file,
 * exports ONNX (fixed input shape) and, with --torch, times torch; then step-seg and onnxruntime run
 * the same random input one after the other (never at once): warm-up, then the median of N runs, and
 * their outputs are compared (relative L2 of the final-norm tokens; must be < 1e-4).
 * GFLOPs are step-seg's count of the work done (GEMMs and attention); GFLOP/s divides it by each time.
 * "busy" is the share of the CPU that other processes used while step-seg and onnxruntime were
 * timed: above a few percent, the figures were disturbed.
 *
 * Then the segment() section (scripts/bench-segment.ts): the bundled model's whole segment() on the
 * shared photos at a long side of 1024, dense and STEP, beside onnxruntime-node's dense forward of the
 * same network, and STEP's own costs per stage against the dense forward.
 *
 * Usage (from the package root, after `npx cmake-js compile` and `npm run build:ts`):
 *   node --import tsx scripts/bench-cpu.ts                   # vit-s, vit-b at 512 and 1024, then segment()
 *   node --import tsx scripts/bench-cpu.ts --quick           # vit-s at 512 only, 3 runs; segment() on one photo
 *   node --import tsx scripts/bench-cpu.ts --models vit-s --sizes 512,1024 --runs 5 --torch
 *   node --import tsx scripts/bench-cpu.ts --segment --threads-list 1,2   # segment() alone, a row per thread count
 * Options: --models vit-s,vit-b  --sizes 512,1024  --runs N (default 5 at 512², 3 above and for segment())
 *   --warmup N (1)  --threads N (default: all cores; sets STEP_SEG_NUM_THREADS, ort's intra-op threads
 *   and torch's)  --threads-list 1,2 (the whole bench once per thread count, each in a child process,
 *   since the engine sizes its pool once; one table at the end)  --torch (also time PyTorch)
 *   --python PATH (/usr/bin/python3)  --keep (keep temp files)
 *   --dense (the random-weight forwards alone)  --segment (the segment() section alone)
 *   --photos DIR (../shared/images)  --long-side N (1024)
 *   --precision fp32,bf16 (the engine's precisions, loadModel's `precision`; default both in the dense
 *   section, a column each, and the library's default for segment(), or the first one given;
 *   onnxruntime stays float32). Outputs must agree with onnxruntime's to a relative L2 of 1e-4 in
 *   fp32 and 1e-2 in bf16, and bf16 with the engine's own fp32 to 1e-2.
 * Peers, none in package.json:
 *   onnxruntime-node: npm install --no-save --ignore-scripts onnxruntime-node@1.30.0
 *     (--ignore-scripts skips its install script, which downloads GPU parts; the CPU binary is in the package)
 *   torch (export, and --torch): Debian's python3-torch, with libopenblas0-pthread (without it torch
 *     uses the reference BLAS and is no peer): apt install python3-torch libopenblas0-pthread
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { cpuMeter, fill, fmt, fmtExp, kOrtInstall, loadOrt, ortSession, printTable, relL2, rng, timeRuns, type Ort } from './bench-common';
import { benchSegment, printSegmentTables, segmentRowsAgree, type SegmentRow } from './bench-segment';

interface Arch {
  name: string;
  embedDim: number;
  depth: number;
  heads: number;
}
const kArchs: Record<string, Arch> = {
  'vit-s': { name: 'ViT-S/16', embedDim: 384, depth: 12, heads: 6 },
  'vit-b': { name: 'ViT-B/16', embedDim: 768, depth: 12, heads: 12 },
};
const kPatch = 16;
const kMaxRelL2 = 1e-4;
const kMaxRelL2Bf16 = 1e-2;

interface Args {
  models: string[];
  sizes: number[];
  runs?: number;
  warmup: number;
  threads: number;
  threadsList?: number[];
  torch: boolean;
  python: string;
  keep: boolean;
  dense: boolean;
  segment: boolean;
  quick: boolean;
  photos: string;
  longSide: number;
  precisions: ('fp32' | 'bf16')[];
  precisionGiven: boolean;
  onnxCache?: string; // set by the parent of a --threads-list run: exported graphs shared
  rowsOut?: string; // set by the parent of a --threads-list run: where the child writes its rows
}

function usage(message: string): never {
  console.error(`bench-cpu: ${message}\nsee the header of scripts/bench-cpu.ts for the options`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    models: ['vit-s', 'vit-b'],
    sizes: [512, 1024],
    warmup: 1,
    threads: os.availableParallelism(),
    torch: false,
    python: '/usr/bin/python3',
    keep: false,
    dense: true,
    segment: true,
    quick: false,
    photos: path.join(__dirname, '..', '..', 'shared', 'images'),
    longSide: 1024,
    precisions: ['fp32', 'bf16'],
    precisionGiven: false,
  };
  let only: 'dense' | 'segment' | undefined;
  const list = (v: string | undefined) => (v ?? '').split(',').filter(Boolean);
  const int = (v: string | undefined, name: string, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) usage(`expected an integer >= ${min} for ${name} but received ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => argv[++i];
    if (k === '--quick') Object.assign(a, { models: ['vit-s'], sizes: [512], runs: 3, quick: true });
    else if (k === '--models') a.models = list(v());
    else if (k === '--sizes') a.sizes = list(v()).map((s) => int(s, '--sizes', kPatch));
    else if (k === '--runs') a.runs = int(v(), '--runs', 1);
    else if (k === '--warmup') a.warmup = int(v(), '--warmup', 0);
    else if (k === '--threads') a.threads = int(v(), '--threads', 1);
    else if (k === '--threads-list') a.threadsList = list(v()).map((t) => int(t, '--threads-list', 1));
    else if (k === '--dense' || k === '--segment') only = k === '--dense' ? 'dense' : 'segment';
    else if (k === '--photos') a.photos = path.resolve(v() ?? '');
    else if (k === '--long-side') a.longSide = int(v(), '--long-side', kPatch);
    else if (k === '--precision') (a.precisions = list(v()) as Args['precisions']), (a.precisionGiven = true);
    else if (k === '--onnx-cache') a.onnxCache = v();
    else if (k === '--rows-out') a.rowsOut = v();
    else if (k === '--torch') a.torch = true;
    else if (k === '--python') a.python = v();
    else if (k === '--keep') a.keep = true;
    else usage(`unknown option ${k}`);
  }
  for (const m of a.models) if (!kArchs[m]) usage(`unknown model ${m}: expected ${Object.keys(kArchs).join(', ')}`);
  for (const s of a.sizes) if (s % kPatch) usage(`size ${s} is not a multiple of the patch size ${kPatch}`);
  if (!a.precisions.length || a.precisions.some((p) => p !== 'fp32' && p !== 'bf16'))
    usage(`expected fp32, bf16 or fp32,bf16 for --precision but received ${a.precisions.join(',')}`);
  if (a.threadsList && !a.threadsList.length) usage('--threads-list takes a comma-separated list of thread counts');
  if (only) a.dense = only === 'dense', a.segment = only === 'segment';
  return a;
}

/**
 * timm-named random weights and config for a features-only model. Linear and conv weights and biases,
 * cls_token and pos_embed: std 0.02. Norms: 1 ± 0.02 and 0 ± 0.02 (not exact ones and zeros, so
 * that swapped weight and bias or a dropped norm affine still fail the output check).
 */
function randomModel(arch: Arch, size: number, seed: number): Buffer {
  const C = arch.embedDim, Hd = 4 * C, g = (size / kPatch) ** 2;
  const next = rng(seed);
  type Entry = { dtype: 'F32'; shape: number[]; data: Float32Array };
  const t: Record<string, Entry> = {};
  const add = (name: string, shape: number[], mean = 0, std = 0.02) => {
    t[name] = { dtype: 'F32', shape, data: fill(shape.reduce((a, b) => a * b, 1), next, mean, std) };
  };
  add('patch_embed.proj.weight', [C, 3, kPatch, kPatch]);
  add('patch_embed.proj.bias', [C]);
  add('cls_token', [1, 1, C]);
  add('pos_embed', [1, 1 + g, C]);
  for (let i = 0; i < arch.depth; i++) {
    const b = `blocks.${i}.`;
    add(b + 'norm1.weight', [C], 1);
    add(b + 'norm1.bias', [C]);
    add(b + 'attn.qkv.weight', [3 * C, C]);
    add(b + 'attn.qkv.bias', [3 * C]);
    add(b + 'attn.proj.weight', [C, C]);
    add(b + 'attn.proj.bias', [C]);
    add(b + 'norm2.weight', [C], 1);
    add(b + 'norm2.bias', [C]);
    add(b + 'mlp.fc1.weight', [Hd, C]);
    add(b + 'mlp.fc1.bias', [Hd]);
    add(b + 'mlp.fc2.weight', [C, Hd]);
    add(b + 'mlp.fc2.bias', [C]);
  }
  add('norm.weight', [C], 1);
  add('norm.bias', [C]);
  const config = {
    arch: 'timm.VisionTransformer',
    img_size: [size, size],
    patch_size: kPatch,
    embed_dim: C,
    depth: arch.depth,
    num_heads: arch.heads,
    mlp_ratio: 4,
    qkv_bias: true,
    class_token: true,
    norm_eps: 1e-6,
  };
  return encodeSafetensors(t, { config: JSON.stringify(config) });
}

function torchVersion(python: string): string | undefined {
  const r = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

interface Row {
  model: string;
  size: number;
  threads: number;
  tokens: number;
  gflops: number;
  /** The engine's runs, one per precision asked: what ran (model.precision), ms, relL2 against ort */
  ours: { precision: string; ms: number; ortErr?: number; fp32Err?: number }[];
  ortMs?: number;
  torchMs?: number;
  torchErr?: number;
  busy: number;
}

const limitOf = (precision: string) => (precision === 'bf16' ? kMaxRelL2Bf16 : kMaxRelL2);

function printDenseTable(rows: Row[]): void {
  if (!rows.length) return;
  const head = ['model', 'size', 'threads', 'tokens', 'GFLOPs', 'precision', 'step-seg ms', 'GFLOP/s', 'ort ms', 'ort GFLOP/s', 'ratio ort/ours', 'torch ms', 'relL2 ort', 'relL2 fp32', 'busy'];
  const body = rows.flatMap((r) =>
    r.ours.map((o) => [
      r.model,
      `${r.size}²`,
      String(r.threads),
      String(r.tokens),
      fmt(r.gflops, 1),
      o.precision,
      fmt(o.ms, 0),
      fmt(r.gflops / (o.ms / 1e3), 0),
      fmt(r.ortMs, 0),
      r.ortMs === undefined ? '-' : fmt(r.gflops / (r.ortMs / 1e3), 0),
      r.ortMs === undefined ? '-' : fmt(r.ortMs / o.ms, 2),
      fmt(r.torchMs, 0),
      fmtExp(o.ortErr),
      fmtExp(o.fp32Err),
      `${(100 * r.busy).toFixed(0)}%`,
    ]),
  );
  printTable(head, body, 2);
}

// Imported after STEP_SEG_NUM_THREADS is set: the addon sizes its thread pool on first use.
type Lib = typeof import('../lib/index');
let encodeSafetensors: Lib['encodeSafetensors'];

// The dense forwards of random-weight ViT-S/B, one row per model and size.
async function benchDense(lib: Lib, args: Args, ort: Ort | undefined, torch: string | undefined, tmp: string): Promise<Row[]> {
  const exporter = path.join(__dirname, 'export_vit_onnx.py');
  const rows: Row[] = [];
  for (const key of args.models) {
    for (const size of args.sizes) {
      const arch = kArchs[key];
      const runs = args.runs ?? (size <= 512 ? 5 : 3);
      const tokens = 1 + (size / kPatch) ** 2;
      const dims = [1, 3, size, size];
      const seed = 1000 * args.models.indexOf(key) + size;
      const weights = randomModel(arch, size, seed);
      const pixels = fill(3 * size * size, rng(seed + 1), 0, 1);
      const weightsPath = path.join(tmp, `${key}-${size}.safetensors`);
      const onnxPath = path.join(tmp, `${key}-${size}.onnx`);
      const inputPath = path.join(tmp, `${key}-${size}.input.f32`);
      const torchOutPath = path.join(tmp, `${key}-${size}.torch.f32`);
      fs.writeFileSync(weightsPath, weights);
      fs.writeFileSync(inputPath, pixels);
      console.log(`\n${arch.name} ${size}²: ${tokens} tokens, ${runs} runs after ${args.warmup} warm-up`);

      // The peer in Python first, while nothing else of this process holds the CPU or memory.
      let torchMs: number | undefined, torchOut: Float32Array | undefined, haveOnnx = false;
      if (torch) {
        const py = [exporter, weightsPath, ort ? onnxPath : '-', String(size), String(size), '--threads', String(args.threads)];
        if (args.torch) py.push('--input', inputPath, '--output', torchOutPath, '--time', String(runs), '--warmup', String(args.warmup));
        const r = spawnSync(args.python, py, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
        if (r.status !== 0) {
          console.log(`  export_vit_onnx.py failed (status ${r.status}):\n${r.stderr}`);
        } else {
          haveOnnx = !!ort;
          if (args.torch) {
            const line = r.stdout.trim().split('\n').pop() ?? '{}';
            torchMs = (JSON.parse(line) as { torch_ms: number }).torch_ms;
            const b = fs.readFileSync(torchOutPath);
            torchOut = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
            console.log(`  torch: ${torchMs.toFixed(0)} ms`);
          }
        }
      }

      const meter = cpuMeter();
      let gflops = 0;
      const ours: { precision: string; ms: number; out: Float32Array }[] = [];
      for (const precision of args.precisions) {
        const model = await lib.loadModel(weights, { device: 'cpu', precision });
        const t = await timeRuns(args.warmup, runs, async () => {
          const r = await model.forwardFeatures({ data: pixels, dims });
          gflops = r.stats.gflops;
          return r.data as Float32Array;
        });
        ours.push({ precision: model.precision, ms: t.ms, out: t.out });
        model.dispose();
        console.log(`  step-seg ${model.precision}: ${t.ms.toFixed(0)} ms (runs ${t.runs.map((x) => x.toFixed(0)).join(' ')}), ${gflops.toFixed(1)} GFLOPs`);
      }

      let ortRes: Awaited<ReturnType<typeof timeRuns<Float32Array>>> | undefined;
      if (ort && haveOnnx) {
        const session = await ortSession(ort, onnxPath, args.threads);
        const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', pixels, dims) };
        ortRes = await timeRuns(args.warmup, runs, async () => {
          const out = await session.run(feeds);
          return out[session.outputNames[0]].data as Float32Array;
        });
        await session.release();
        console.log(`  onnxruntime: ${ortRes.ms.toFixed(0)} ms (runs ${ortRes.runs.map((x) => x.toFixed(0)).join(' ')})`);
      }
      const busy = meter();

      const fp32 = ours.find((o) => o.precision === 'fp32');
      const row: Row = {
        model: arch.name, size, threads: args.threads, tokens, gflops, ortMs: ortRes?.ms, torchMs, busy,
        ours: ours.map((o) => ({
          precision: o.precision, ms: o.ms,
          ortErr: ortRes ? relL2(o.out, ortRes.out) : undefined,
          fp32Err: fp32 && o !== fp32 ? relL2(o.out, fp32.out) : undefined,
        })),
      };
      if (torchOut) row.torchErr = relL2((fp32 ?? ours[0]).out, torchOut);
      const check = (what: string, err: number | undefined, limit: number) => {
        if (err !== undefined) console.log(`  relative L2 ${what}: ${err.toExponential(2)} ${err < limit ? 'ok' : `FAILS (limit ${limit})`}`);
      };
      for (const o of row.ours) {
        check(`step-seg ${o.precision} vs onnxruntime`, o.ortErr, limitOf(o.precision));
        check(`step-seg ${o.precision} vs step-seg fp32`, o.fp32Err, kMaxRelL2Bf16);
      }
      check(`step-seg ${(fp32 ?? ours[0]).precision} vs torch`, row.torchErr, limitOf((fp32 ?? ours[0]).precision));
      rows.push(row);
      for (const p of [weightsPath, onnxPath, inputPath, torchOutPath]) if (!args.keep) fs.rmSync(p, { force: true });
    }
  }
  return rows;
}


interface Results {
  dense: Row[];
  segment: SegmentRow[];
}

function report(r: Results): void {
  printDenseTable(r.dense);
  printSegmentTables(r.segment);
  console.log(`load average after: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const bad = r.dense.filter(
    (x) =>
      x.ours.some((o) => !((o.ortErr ?? 0) < limitOf(o.precision)) || !((o.fp32Err ?? 0) < kMaxRelL2Bf16)) ||
      !((x.torchErr ?? 0) < limitOf(x.ours[0]?.precision ?? 'fp32')),
  );
  if (bad.length) console.log(`outputs disagree for ${bad.map((x) => `${x.model} ${x.size}²`).join(', ')}`);
  if (!segmentRowsAgree(r.segment)) console.log('segment(): the engine and onnxruntime disagree on the bundled model (see relL2 ort)');
  if (bad.length || !segmentRowsAgree(r.segment)) process.exitCode = 1;
}

// One process per thread count (the engine sizes its pool once), the exported graphs shared; each
// child prints as it goes and hands its rows back in a file; then one table over all of them.
function runThreadsList(args: Args): void {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-bench-list-'));
  const all: Results = { dense: [], segment: [] };
  const argv = process.argv.slice(2);
  const own = argv.filter((_, i) => argv[i] !== '--threads-list' && argv[i - 1] !== '--threads-list' && argv[i] !== '--threads' && argv[i - 1] !== '--threads');
  try {
    for (const threads of args.threadsList!) {
      const rowsOut = path.join(tmp, `rows-${threads}.json`);
      console.log(`\n==== ${threads} thread${threads === 1 ? '' : 's'} ====`);
      const r = spawnSync(process.execPath, [...process.execArgv, __filename, ...own, '--threads', String(threads), '--onnx-cache', tmp, '--rows-out', rowsOut], { stdio: 'inherit' });
      if (r.status !== 0) process.exitCode = 1;
      if (!fs.existsSync(rowsOut)) continue;
      const rows = JSON.parse(fs.readFileSync(rowsOut, 'utf8')) as Results;
      all.dense.push(...rows.dense), all.segment.push(...rows.segment);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`\n==== all thread counts: ${args.threadsList!.join(', ')} ====`);
  report(all);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.threadsList) return runThreadsList(args);
  process.env.STEP_SEG_NUM_THREADS = String(args.threads);
  const lib = await import('../lib/index');
  encodeSafetensors = lib.encodeSafetensors;
  const info = lib.runtimeInfo();

  const { ort, why } = await loadOrt();
  const torch = torchVersion(args.python);
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`step-seg CPU bench: ${cpu}, ${os.cpus().length} cores, ${args.threads} threads; gemm kernel ${info.gemmKernel}, pool ${info.threads} threads; bf16 kernel ${info.bf16Kernel}; precisions ${args.precisions.join(', ')} (the library's default: ${info.defaultPrecision})`);
  console.log(`load average before: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if (ort) console.log(`onnxruntime-node ${ort.env.versions?.common ?? ''}: float32, intra-op threads ${args.threads}, sequential, all graph optimisations`);
  else console.log(`onnxruntime-node is missing (${why}): ${kOrtInstall}`);
  if (torch) console.log(`torch ${torch} at ${args.python}${args.torch ? ', timed' : ' (export only; --torch to time it)'}`);
  else
    console.log(
      `python with torch is missing at ${args.python} (--python PATH): on Debian, apt install python3-torch libopenblas0-pthread; without it there is no ONNX export, so onnxruntime is skipped too`,
    );

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-bench-'));
  const results: Results = { dense: [], segment: [] };
  try {
    if (args.dense) results.dense = await benchDense(lib, args, ort, torch, tmp);
    if (args.segment) {
      const opts = { photos: args.photos, longSide: args.longSide, runs: args.runs ?? 3, warmup: args.warmup, threads: args.threads };
      results.segment = await benchSegment(lib, ort, { ...opts, precision: args.precisionGiven ? args.precisions[0] : undefined, python: args.python, haveTorch: !!torch, onnxCache: args.onnxCache ?? tmp, quick: args.quick });
    }
  } finally {
    if (!args.keep) fs.rmSync(tmp, { recursive: true, force: true });
    else console.log(`\nfiles kept in ${tmp}`);
  }
  if (args.rowsOut) fs.writeFileSync(args.rowsOut, JSON.stringify(results));
  report(results);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
