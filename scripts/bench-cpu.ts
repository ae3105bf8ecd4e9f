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
 * Usage (from the package root, after `npx cmake-js compile` and `npm run build:ts`):
 *   node --import tsx scripts/bench-cpu.ts                   # vit-s, vit-b at 512 and 1024
 *   node --import tsx scripts/bench-cpu.ts --quick           # vit-s at 512 only, 3 runs
 *   node --import tsx scripts/bench-cpu.ts --models vit-s --sizes 512,1024 --runs 5 --torch
 * Options: --models vit-s,vit-b  --sizes 512,1024  --runs N (default 5 at 512², 3 above)
 *   --warmup N (1)  --threads N (default: all cores; sets STEP_SEG_NUM_THREADS, ort's intra-op threads
 *   and torch's)  --torch (also time PyTorch)  --python PATH (/usr/bin/python3)  --keep (keep temp files)
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

interface Args {
  models: string[];
  sizes: number[];
  runs?: number;
  warmup: number;
  threads: number;
  torch: boolean;
  python: string;
  keep: boolean;
}

function usage(message: string): never {
  console.error(`bench-cpu: ${message}\nsee the header of scripts/bench-cpu.ts for the options`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { models: ['vit-s', 'vit-b'], sizes: [512, 1024], warmup: 1, threads: os.availableParallelism(), torch: false, python: '/usr/bin/python3', keep: false };
  const list = (v: string | undefined) => (v ?? '').split(',').filter(Boolean);
  const int = (v: string | undefined, name: string, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) usage(`expected an integer >= ${min} for ${name} but received ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => argv[++i];
    if (k === '--quick') Object.assign(a, { models: ['vit-s'], sizes: [512], runs: 3 });
    else if (k === '--models') a.models = list(v());
    else if (k === '--sizes') a.sizes = list(v()).map((s) => int(s, '--sizes', kPatch));
    else if (k === '--runs') a.runs = int(v(), '--runs', 1);
    else if (k === '--warmup') a.warmup = int(v(), '--warmup', 0);
    else if (k === '--threads') a.threads = int(v(), '--threads', 1);
    else if (k === '--torch') a.torch = true;
    else if (k === '--python') a.python = v();
    else if (k === '--keep') a.keep = true;
    else usage(`unknown option ${k}`);
  }
  for (const m of a.models) if (!kArchs[m]) usage(`unknown model ${m}: expected ${Object.keys(kArchs).join(', ')}`);
  for (const s of a.sizes) if (s % kPatch) usage(`size ${s} is not a multiple of the patch size ${kPatch}`);
  return a;
}

// Seeded uniform numbers (mulberry32); weights are uniform with the std asked for ("normal-ish").
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function fill(n: number, next: () => number, mean: number, std: number): Float32Array {
  const out = new Float32Array(n), half = std * Math.sqrt(3);
  for (let i = 0; i < n; i++) out[i] = mean + half * (2 * next() - 1);
  return out;
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

function relL2(a: Float32Array, ref: Float32Array): number {
  if (a.length !== ref.length) return NaN;
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return Math.sqrt(num / den);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function timeRuns(warmup: number, runs: number, once: () => Promise<Float32Array>) {
  let out: Float32Array = new Float32Array(0);
  for (let i = 0; i < warmup; i++) out = await once();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    out = await once();
    ms.push(performance.now() - t0);
  }
  return { ms: median(ms), runs: ms, out };
}

// CPU time, in ms, used by every process but this one since `start` (os.cpus() against cpuUsage()).
function cpuMeter() {
  const busy = () => os.cpus().reduce((s, c) => s + c.times.user + c.times.nice + c.times.sys + c.times.irq, 0);
  const b0 = busy(), own0 = process.cpuUsage(), t0 = performance.now();
  return () => {
    const own = process.cpuUsage(own0);
    const others = busy() - b0 - (own.user + own.system) / 1000;
    return Math.max(0, others) / ((performance.now() - t0) * os.cpus().length);
  };
}

// The peers: onnxruntime-node (dynamic, not a dependency) and Debian's python3 with torch.
type Ort = typeof import('onnxruntime-node');
async function loadOrt(): Promise<{ ort?: Ort; why?: string }> {
  try {
    return { ort: (await import('onnxruntime-node')) as Ort };
  } catch (err) {
    return { why: (err as Error).message.split('\n')[0] };
  }
}
function torchVersion(python: string): string | undefined {
  const r = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

interface Row {
  model: string;
  size: number;
  tokens: number;
  gflops: number;
  oursMs: number;
  ortMs?: number;
  torchMs?: number;
  ortErr?: number;
  torchErr?: number;
  busy: number;
}

function printTable(rows: Row[]): void {
  const f = (x: number | undefined, d: number) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
  const e = (x: number | undefined) => (x === undefined ? '-' : x.toExponential(1));
  const head = ['model', 'size', 'tokens', 'GFLOPs', 'step-seg ms', 'GFLOP/s', 'ort ms', 'ort GFLOP/s', 'ratio ort/ours', 'torch ms', 'relL2 ort', 'relL2 torch', 'busy'];
  const body = rows.map((r) => [
    r.model,
    `${r.size}²`,
    String(r.tokens),
    f(r.gflops, 1),
    f(r.oursMs, 0),
    f(r.gflops / (r.oursMs / 1e3), 0),
    f(r.ortMs, 0),
    r.ortMs === undefined ? '-' : f(r.gflops / (r.ortMs / 1e3), 0),
    r.ortMs === undefined ? '-' : f(r.ortMs / r.oursMs, 2),
    f(r.torchMs, 0),
    e(r.ortErr),
    e(r.torchErr),
    `${(100 * r.busy).toFixed(0)}%`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  console.log('\n' + line(head));
  console.log(w.map((n) => '-'.repeat(n)).join('  '));
  for (const b of body) console.log(line(b));
}

// Imported after STEP_SEG_NUM_THREADS is set: the addon sizes its thread pool on first use.
let encodeSafetensors: typeof import('../lib/index').encodeSafetensors;

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  process.env.STEP_SEG_NUM_THREADS = String(args.threads);
  const lib = await import('../lib/index');
  encodeSafetensors = lib.encodeSafetensors;
  const info = lib.runtimeInfo();
  const exporter = path.join(__dirname, 'export_vit_onnx.py');

  const { ort, why } = await loadOrt();
  const torch = torchVersion(args.python);
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`step-seg CPU bench: ${cpu}, ${os.cpus().length} cores, ${args.threads} threads; gemm kernel ${info.gemmKernel}, pool ${info.threads} threads`);
  console.log(`load average before: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if (ort) console.log(`onnxruntime-node ${ort.env.versions?.common ?? ''}: intra-op threads ${args.threads}, sequential, all graph optimisations`);
  else console.log(`onnxruntime-node is missing (${why}): npm install --no-save --ignore-scripts onnxruntime-node@1.30.0`);
  if (torch) console.log(`torch ${torch} at ${args.python}${args.torch ? ', timed' : ' (export only; --torch to time it)'}`);
  else
    console.log(
      `python with torch is missing at ${args.python} (--python PATH): on Debian, apt install python3-torch libopenblas0-pthread; without it there is no ONNX export, so onnxruntime is skipped too`,
    );

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-bench-'));
  const rows: Row[] = [];
  try {
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
        const model = await lib.loadModel(weights, { device: 'cpu' });
        let gflops = 0;
        const ours = await timeRuns(args.warmup, runs, async () => {
          const r = await model.forwardFeatures({ data: pixels, dims });
          gflops = r.stats.gflops;
          return r.data as Float32Array;
        });
        model.dispose();
        console.log(`  step-seg: ${ours.ms.toFixed(0)} ms (runs ${ours.runs.map((x) => x.toFixed(0)).join(' ')}), ${gflops.toFixed(1)} GFLOPs`);

        let ortRes: Awaited<ReturnType<typeof timeRuns>> | undefined;
        if (ort && haveOnnx) {
          const session = await ort.InferenceSession.create(onnxPath, {
            executionProviders: ['cpu'],
            intraOpNumThreads: args.threads,
            interOpNumThreads: 1,
            executionMode: 'sequential',
            graphOptimizationLevel: 'all',
          });
          const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', pixels, dims) };
          ortRes = await timeRuns(args.warmup, runs, async () => {
            const out = await session.run(feeds);
            return out[session.outputNames[0]].data as Float32Array;
          });
          await session.release();
          console.log(`  onnxruntime: ${ortRes.ms.toFixed(0)} ms (runs ${ortRes.runs.map((x) => x.toFixed(0)).join(' ')})`);
        }
        const busy = meter();

        const row: Row = { model: arch.name, size, tokens, gflops, oursMs: ours.ms, ortMs: ortRes?.ms, torchMs, busy };
        if (ortRes) row.ortErr = relL2(ours.out, ortRes.out);
        if (torchOut) row.torchErr = relL2(ours.out, torchOut);
        for (const [peer, err] of [['onnxruntime', row.ortErr], ['torch', row.torchErr]] as const)
          if (err !== undefined)
            console.log(`  relative L2 step-seg vs ${peer}: ${err.toExponential(2)} ${err < kMaxRelL2 ? 'ok' : `FAILS (limit ${kMaxRelL2})`}`);
        rows.push(row);
        for (const p of [weightsPath, onnxPath, inputPath, torchOutPath]) if (!args.keep) fs.rmSync(p, { force: true });
      }
    }
  } finally {
    if (!args.keep) fs.rmSync(tmp, { recursive: true, force: true });
    else console.log(`\nfiles kept in ${tmp}`);
  }
  printTable(rows);
  console.log(`load average after: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const bad = rows.filter((r) => (r.ortErr ?? 0) >= kMaxRelL2 || (r.torchErr ?? 0) >= kMaxRelL2 || Number.isNaN(r.ortErr ?? 0));
  if (bad.length) {
    console.log(`outputs disagree for ${bad.map((r) => `${r.model} ${r.size}²`).join(', ')}`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
