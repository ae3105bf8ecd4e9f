/**
 * bench-cuda.ts: step-seg's CUDA GEMM and attention at the real ViT shapes, beside PyTorch on the same
 * GPU in the same run, as one table: shape, the variant choose_<op>_kernel() picks, our ms, torch ms,
 * torch ms / our ms (above 1: ours is faster), and both TFLOP/s.
 *
 * Shapes (batch 1, patch 16, D = 64 heads), the benchmark sizes of the case tables (scripts/cases/gemm.ts,
 * attention.ts; the CUDA op tests run the same ops there at test sizes):
 *   gemm       M = 1025, 2305, 4097 tokens (512², 768², 1024² images plus the class token) times the four
 *              Linear layers of each width C = 384, 768, 1024 (ViT-S, -B, -L): qkv (N = 3C, K = C),
 *              proj (C, C), fc1 (4C, C), fc2 (C, 4C). bf16 a and w, float32 bias, bf16 out, no epilogue:
 *              the product PyTorch's F.linear computes. FLOPs 2 M N K (native/core/cost.h).
 *   attention  T = 1024, 2304, 4096 tokens, H = 6, 12, 16 heads (one per width), bf16 packed qkv
 *              (T, 3, H, D) in, bf16 out; torch's F.scaled_dot_product_attention on timm's strided views
 *              of the same layout. FLOPs 4 T² H D (native/core/cost.h).
 * Timing, ours and torch's alike: 2 warm-ups, then N runs enqueued back to back, each between two CUDA
 * events; the median (cudaOps.time, native/cuda/test_support.h; scripts/bench_torch_cuda.py). Inputs
 * stay in L2 between runs where they fit, for both.
 * Whole-model forwards on the GPU are scripts/bench-cuda-model.ts's.
 *
 * Usage, on the GPU machine (scripts/gpu-check.sh runs it), from the package root:
 *   node --import tsx scripts/bench-cuda.ts [--iterations 50] [--all-kernels] [--no-torch]
 *     [--python python3] [--out FILE]
 * --all-kernels  also times every other variant that can run each GEMM shape (for tuning choose_gemm_kernel)
 * --out FILE     writes the table there too
 * Without a usable GPU it prints why and exits 0 (1 when STEP_SEG_REQUIRE_CUDA=1).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { cudaRequired, type CudaOps, findCudaOps, type GemmKernelName } from '../lib/cuda-ops';
import { attentionBenchShapes } from './cases/attention';
import { gemmBenchShapes } from './cases/gemm';

interface Args {
  iterations: number;
  allKernels: boolean;
  torch: boolean;
  python: string;
  out?: string;
}

function usage(message: string): never {
  console.error(`bench-cuda: ${message}\nsee the header of scripts/bench-cuda.ts for the options`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { iterations: 50, allKernels: false, torch: true, python: 'python3' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => argv[++i] ?? usage(`expected a value after ${k}`);
    if (k === '--iterations') {
      const raw = v(), n = Number(raw);
      if (!Number.isInteger(n) || n < 1) usage(`expected an integer >= 1 for --iterations but received ${raw}`);
      a.iterations = n;
    } else if (k === '--all-kernels') a.allKernels = true;
    else if (k === '--no-torch') a.torch = false;
    else if (k === '--python') a.python = v();
    else if (k === '--out') a.out = v();
    else usage(`unknown option ${k}`);
  }
  return a;
}

type GemmShape = ReturnType<typeof gemmBenchShapes>[number];
type AttentionShape = ReturnType<typeof attentionBenchShapes>[number];

/** n random bf16 values of magnitude 0.5 .. 2 with random signs (xorshift32: 16M values in well under a second). */
function randomBf16(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >>> 17, s ^= s << 5;
    out[i] = (s & 0x8000) | ((126 + ((s >>> 16) & 1)) << 7) | (s & 0x7f);
  }
  return out;
}

interface Row {
  op: string;
  shape: string;
  kernel: string;
  flops: number;
  ours: number;
  torch?: number;
}

function timeGemm(ops: CudaOps, s: GemmShape, kernel: GemmKernelName, iterations: number): number {
  const a = randomBf16(s.M * s.K, 1), w = randomBf16(s.N * s.K, 2);
  const bias = new Float32Array(s.N).fill(0.25), cBf16 = new Uint16Array(s.M * s.N);
  return ops.time('gemm', { M: s.M, N: s.N, K: s.K, a, w, bias, cBf16, kernel }, iterations);
}

function timeAttention(ops: CudaOps, s: AttentionShape, iterations: number): number {
  const C = s.H * s.D;
  const qkvBf16 = randomBf16(s.T * 3 * C, 3), outBf16 = new Uint16Array(s.T * C);
  const offsets = Int32Array.from([0, s.T]);
  return ops.time('attention', { batch: 1, offsets, heads: s.H, headDim: s.D, scale: 1 / Math.sqrt(s.D), qkvBf16, outBf16 }, iterations);
}

interface TorchResult {
  torch?: string;
  device?: string;
  error?: string;
  gemm?: { M: number; N: number; K: number; ms: number }[];
  attention?: { T: number; H: number; D: number; ms: number; backends: Record<string, number> }[];
}

/** scripts/bench_torch_cuda.py --json on the same shapes; its last stdout line is the JSON result. */
function runTorch(args: Args, gemm: GemmShape[], attention: AttentionShape[]): TorchResult {
  const unique = <T>(xs: T[]) => [...new Map(xs.map((x) => [JSON.stringify(x), x])).values()];
  const spec = { gemm: unique(gemm.map((g) => [g.M, g.N, g.K])), attention: unique(attention.map((t) => [t.T, t.H, t.D])) };
  const script = path.join(__dirname, 'bench_torch_cuda.py');
  const r = spawnSync(args.python, [script, '--json', '--iterations', String(args.iterations), '--spec', JSON.stringify(spec)], {
    encoding: 'utf8',
    timeout: 20 * 60 * 1000,
    maxBuffer: 64 << 20,
  });
  if (r.error) return { error: `${args.python} could not run: ${r.error.message}` };
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as TorchResult;
  } catch {
    return { error: `${path.basename(script)} exited with ${r.status}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}` };
  }
}

function formatTable(rows: Row[]): string[] {
  const num = (v: number | undefined, digits: number) => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits));
  const header = ['op', 'shape', 'kernel', 'ours ms', 'torch ms', 'torch/ours', 'ours TFLOP/s', 'torch TFLOP/s'];
  const cells = rows.map((r) => [
    r.op, r.shape, r.kernel, num(r.ours, 4), num(r.torch, 4), num(r.torch === undefined ? undefined : r.torch / r.ours, 2),
    num(r.flops / r.ours / 1e9, 1), num(r.torch === undefined ? undefined : r.flops / r.torch / 1e9, 1),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((v, i) => (i < 3 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
  return [line(header), ...cells.map(line)];
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const found = await findCudaOps();
  if ('reason' in found) {
    console.log(`bench-cuda: no CUDA benchmark here: ${found.reason}`);
    process.exit(cudaRequired ? 1 : 0);
  }
  const { ops, device } = found;
  const gemm = gemmBenchShapes(), attention = attentionBenchShapes();

  const rows: Row[] = [];
  for (const s of gemm) {
    const chosen = ops.chooseGemm(s.M, s.N, s.K);
    const kernels: GemmKernelName[] = [chosen];
    if (args.allKernels) for (const k of ['mma128x128', 'mma128x64', 'mma64x64', 'simple'] as const) if (k !== chosen) kernels.push(k);
    for (const kernel of kernels)
      rows.push({
        op: kernel === chosen ? s.label : `${s.label} (forced)`,
        shape: `M=${s.M} N=${s.N} K=${s.K}`,
        kernel,
        flops: 2 * s.M * s.N * s.K,
        ours: timeGemm(ops, s, kernel, args.iterations),
      });
  }
  for (const s of attention)
    rows.push({
      op: s.label,
      shape: `T=${s.T} H=${s.H} D=${s.D}`,
      kernel: ops.chooseAttention(s.D),
      flops: 4 * s.T * s.T * s.H * s.D,
      ours: timeAttention(ops, s, args.iterations),
    });

  const notes: string[] = [];
  if (args.torch) {
    const torch = runTorch(args, gemm, attention);
    if (torch.error) notes.push(`torch: not timed: ${torch.error}`);
    else {
      notes.push(`torch: PyTorch ${torch.torch} on ${torch.device} (F.linear; F.scaled_dot_product_attention, default backend)`);
      for (const r of rows) {
        const [a, b, c] = (r.shape.match(/\d+/g) ?? []).map(Number);
        r.torch = r.op.includes('attn')
          ? torch.attention?.find((t) => t.T === a && t.H === b && t.D === c)?.ms
          : torch.gemm?.find((g) => g.M === a && g.N === b && g.K === c)?.ms;
      }
      for (const t of torch.attention ?? []) {
        const best = Object.entries(t.backends).sort((x, y) => x[1] - y[1])[0];
        if (best && best[1] < t.ms * 0.97)
          notes.push(`torch: T=${t.T} H=${t.H}: the ${best[0]} backend alone takes ${best[1].toFixed(4)} ms (default ${t.ms.toFixed(4)})`);
      }
    }
  } else notes.push('torch: not timed (--no-torch)');

  const lines = [
    `bench-cuda: ${device}, median of ${args.iterations} runs per shape (CUDA events, back to back)`,
    ...formatTable(rows),
    ...notes,
    'model: whole-model forwards are measured by scripts/bench-cuda-model.ts',
  ];
  console.log(lines.join('\n'));
  if (args.out) {
    fs.mkdirSync(path.dirname(path.resolve(args.out)), { recursive: true });
    fs.writeFileSync(args.out, lines.join('\n') + '\n');
    console.log(`table written to ${args.out}`);
  }
}

main().catch((err) => {
  console.error(`bench-cuda: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
