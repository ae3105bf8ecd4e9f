// The CUDA kernels against the CPU ops (the specification), through cudaOps (native/addon/cuda_binding.cpp):
// every variant that choose_<op>_kernel() or a forced `kernel` allows, float32 and bf16 operands, random
// and edge shapes (sizes off every tile, one row, an empty image), outputs poisoned with NaN before each
// run, and the device-side count paths (upper bound > real count: the rows past the real count must come
// back untouched). Every test skips (a recorded skip, test/helpers/skip.ts) with cudaStatus()'s reason
// when CUDA is not compiled in or no GPU is usable; STEP_SEG_REQUIRE_CUDA=1 (scripts/gpu-check.sh) turns
// that into a failure.
//
// Tolerances. A bf16 kernel is held to STYLE.md's rule: its error against a float32 reference at most
// twice the error of a plain computation in bf16. "Plain" is the least any bf16 computation can do: the
// inputs rounded to bf16, everything in between exact (float32 here: the CPU op on the rounded inputs),
// the output rounded to bf16. The tests compute that baseline on their own data, so the bound follows
// the data instead of a constant (relative L2 of random data: about 1.6e-3 for output rounding alone,
// 2.5e-3 to 6e-3 with input rounding in attention). Two forms of the rule are checked:
//   vs the CPU op on the unrounded inputs:  err <= 2 * relL2(bf16(cpu(bf16 inputs)), cpu(inputs))
//   vs the CPU op on the same bf16 inputs:  err <= 2 * relL2(bf16(cpu(bf16 inputs)), cpu(bf16 inputs))
// The second isolates the kernel's own error (the input rounding, shared by every bf16 path, would hide
// an error of its size otherwise). Emulated in double precision, FlashAttention's extra rounding (P to
// bf16 before P V) costs 0.3x to 1x the output rounding, so 2x holds with margin at every T and D here.
// Float32 outputs of the same rounded inputs need no bf16 allowance: the GPU and the CPU accumulate in
// float32 and differ only in the order of the additions, and tensor cores truncate instead of rounding
// (Fasi et al. 2021), about (K / 16) * 2^-23 = 3e-6 at K = 384; 1e-4 leaves 30x headroom and is still
// 15x below a bf16 rounding, so a kernel that loses precision (bf16 accumulation, a dropped K slice)
// fails. Float32 attention (naive) and layernorm: 2e-5, twice the CPU tests' bound against double.
// image_normalize, patch_gather, token_pos_embed and convert_to_bf16 are specified bit for bit.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { relL2 } from '../helpers/compare';
import {
  type AttentionKernelName,
  cudaRequired,
  type CudaOps,
  type Epilogue,
  findCudaOps,
  fromBf16,
  type GemmKernelName,
  kBf16NaN,
  type LayerNormKernelName,
  onEmulator,
  roundBf16,
  toBf16,
} from '../helpers/gpu';
import { randn, rng } from '../helpers/random';
import { skip } from '../helpers/skip';

const cpu = loadBinding().binding.ops;

// On the CUDA emulator (npm run build:emu), which runs every thread of every block on the CPU, the
// largest shapes shrink; the edge shapes (off every tile, one row, empty, none / all kept) stay.
const emulated = onEmulator();
const big = (onGpu: number, onEmulator: number): number => (emulated ? onEmulator : onGpu);

const kFloat32Tol = 1e-4; // float32 GEMM out vs CPU on the same bf16 inputs (header)
const kFloat32OpTol = 2e-5; // float32 attention (naive) and layernorm vs CPU

let gpu: CudaOps | undefined;
let skipReason = '';
test.before(async () => {
  const found = await findCudaOps();
  if ('ops' in found) {
    gpu = found.ops;
    console.log(`  cuda ops: running on ${found.device}`);
  } else {
    skipReason = found.reason;
  }
});

/** A test that runs only where a GPU is usable (and fails instead of skipping under STEP_SEG_REQUIRE_CUDA). */
function gpuTest(name: string, body: (ops: CudaOps) => void): void {
  test(`cuda ${name}`, (ctx) => {
    if (gpu) body(gpu);
    else if (cudaRequired) assert.unreachable(`STEP_SEG_REQUIRE_CUDA is set but CUDA cannot run: ${skipReason}`);
    else skip(ctx, skipReason);
  });
}

// ---- comparison helpers ----------------------------------------------------------------------------

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Index of the first element whose bits differ, or -1. */
function firstMismatch(got: Float32Array | Uint16Array, want: Float32Array | Uint16Array): number {
  const g = got instanceof Float32Array ? bits(got) : got;
  const w = want instanceof Float32Array ? bits(want as Float32Array) : want;
  assert.is(g.length, w.length, 'lengths');
  for (let i = 0; i < g.length; i++) if (g[i] !== w[i]) return i;
  return -1;
}

function assertBitIdentical(got: Float32Array | Uint16Array, want: Float32Array | Uint16Array, what: string): void {
  const i = firstMismatch(got, want);
  assert.ok(i < 0, `${what}: first difference at element ${i}: got ${got[i]}, want ${want[i]}`);
}

/** Rows 0 .. rows - 1, columns 0 .. cols - 1 of a (.., ld) array, packed. */
function block(a: Float32Array, rows: number, cols: number, ld: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(a.subarray(r * ld, r * ld + cols), r * cols);
  return out;
}

/** Elements of got that the op must not write (outside rows < rows, cols < cols) keep the bits of before. */
function assertUntouched(got: Float32Array | Uint16Array, before: Float32Array | Uint16Array, rows: number, cols: number,
  ld: number, what: string): void {
  const g = got instanceof Float32Array ? bits(got) : got;
  const b = before instanceof Float32Array ? bits(before as Float32Array) : before;
  for (let i = 0; i < g.length; i++) {
    const r = Math.floor(i / ld), c = i % ld;
    if ((r >= rows || c >= cols) && g[i] !== b[i]) assert.unreachable(`${what}: element (${r}, ${c}) outside the output was written`);
  }
}

function assertWithin(err: number, tol: number, what: string): void {
  assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol.toExponential(3)}`);
}

/** Packed-list offsets (B + 1) of images with these row counts. */
function offsetsOf(counts: number[]): Int32Array {
  const offsets = new Int32Array(counts.length + 1);
  counts.forEach((n, b) => (offsets[b + 1] = offsets[b] + n));
  return offsets;
}

const poisonF32 = (n: number): Float32Array => new Float32Array(n).fill(NaN);
const poisonBf16 = (n: number): Uint16Array => new Uint16Array(n).fill(kBf16NaN);

// ---- gemm --------------------------------------------------------------------------------------------

interface GemmCase {
  M: number; // rows of the arrays (the bound when mDevice is set)
  N: number;
  K: number;
  epilogue: Epilogue;
  bias: boolean;
  colScale: boolean;
  lda?: number;
  ldc?: number;
  mDevice?: number;
}

const kMmaKernels: GemmKernelName[] = ['mma128x128', 'mma128x64', 'mma64x64'];

/** The variants that may run a shape: 'auto', 'simple', and the mma tiles when cuda_ops.h allows them. */
function gemmKernels(ops: CudaOps, M: number, N: number, K: number, lda: number, ldc: number): GemmKernelName[] {
  const aligned = lda % 8 === 0 && ldc % 2 === 0; // device buffers themselves are 256-byte aligned
  const mma = aligned && K % 16 === 0 && N % 8 === 0;
  const chosen = ops.chooseGemm(M, N, K, aligned);
  assert.ok(mma ? chosen.startsWith('mma') : chosen === 'simple', `chooseGemm(${M}, ${N}, ${K}, ${aligned}) = ${chosen}`);
  return ['auto', 'simple', ...(mma ? kMmaKernels : [])];
}

/** Runs one case on every given variant, float32 and bf16 outputs, against the CPU op. */
function checkGemm(ops: CudaOps, c: GemmCase, seed: number, kernels: GemmKernelName[]): void {
  const { M, N, K } = c;
  const lda = c.lda ?? K, ldc = c.ldc ?? N;
  const rows = c.mDevice === undefined ? M : Math.min(c.mDevice, M); // rows really computed
  const rand = rng(seed);
  const a = randn(M * lda, rand), w = randn(N * K, rand, (c.epilogue === 'relu6' ? 4 : 1) / Math.sqrt(K));
  const bias = c.bias ? randn(N, rand) : undefined;
  const colScale = c.colScale ? randn(N, rand) : undefined;
  const residual = randn(M * ldc, rand);
  const aBf16 = toBf16(a), wBf16 = toBf16(w);
  const residualCase = c.epilogue === 'residual';
  // The first state of a float32 c: the residual itself (in place, as the model runs it) or poison.
  const initial = residualCase ? residual : poisonF32(M * ldc);
  const cpuGemm = (aIn: Float32Array, wIn: Float32Array): Float32Array => {
    const out = initial.slice();
    cpu.gemm({ M: rows, N, K, a: aIn, lda, w: wIn, bias, colScale, epilogue: c.epilogue, residual: out, c: out, ldc });
    return block(out, rows, N, ldc);
  };
  const exact = cpuGemm(a, w); // float32 inputs: the reference of the STYLE rule
  const same = cpuGemm(fromBf16(aBf16), fromBf16(wBf16)); // the same bf16 inputs as the GPU
  const plain = roundBf16(same);
  const tolExact = 2 * relL2(plain, exact) + 1e-6, tolSame = 2 * relL2(plain, same) + 1e-6;
  const name = JSON.stringify(c);

  for (const kernel of kernels) {
    const params = { M, N, K, a: aBf16, lda, w: wBf16, bias, colScale, epilogue: c.epilogue, ldc, mDevice: c.mDevice, kernel };
    // float32 out; the residual epilogue runs in place: residual and c are the same array
    const out = initial.slice();
    ops.gemm({ ...params, residual: out, c: out });
    const got = block(out, rows, N, ldc);
    assertWithin(relL2(got, same), kFloat32Tol, `${kernel}, float32 out, ${name}, vs CPU on the same bf16 inputs`);
    assertWithin(relL2(got, exact), tolExact, `${kernel}, float32 out, ${name}, vs CPU on float32 inputs`);
    assertUntouched(out, initial, rows, N, ldc, `${kernel}, float32 out, ${name}`);
    // bf16 out (a float32 residual cannot alias it)
    const outBf16 = poisonBf16(M * ldc);
    ops.gemm({ ...params, residual: residual.slice(), cBf16: outBf16 });
    const gotBf16 = block(fromBf16(outBf16), rows, N, ldc);
    assertWithin(relL2(gotBf16, same), tolSame, `${kernel}, bf16 out, ${name}, vs CPU on the same bf16 inputs`);
    assertWithin(relL2(gotBf16, exact), tolExact, `${kernel}, bf16 out, ${name}, vs CPU on float32 inputs`);
    assertUntouched(outBf16, poisonBf16(M * ldc), rows, N, ldc, `${kernel}, bf16 out, ${name}`);
  }
}

const kEpilogues: Epilogue[] = ['none', 'gelu', 'residual', 'relu6', 'sigmoid'];

gpuTest('gemm: M x N x K off every tile, every variant allowed, float32 and bf16 out', (ops) => {
  let i = 0;
  for (const M of [1, 17, 129, big(1025, 257)])
    for (const N of [8, 11, 384, big(1152, 136)])
      for (const K of [16, 30, 384]) {
        const epilogue = kEpilogues[i % kEpilogues.length];
        const c: GemmCase = { M, N, K, epilogue, bias: i % 2 === 0, colScale: epilogue === 'residual' && i % 4 < 2 };
        checkGemm(ops, c, 1000 + i, gemmKernels(ops, M, N, K, K, N));
        i++;
      }
});

gpuTest('gemm: every epilogue, with and without bias and column scale', (ops) => {
  let seed = 2000;
  for (const [M, N, K] of [[129, 384, 384], [70, 11, 30]])
    for (const epilogue of kEpilogues)
      for (const bias of [false, true]) {
        const colScale = epilogue === 'residual' && bias;
        checkGemm(ops, { M, N, K, epilogue, bias, colScale }, seed++, gemmKernels(ops, M, N, K, K, N));
      }
});

gpuTest('gemm: row strides (lda, ldc > K, N); unaligned strides fall back to simple', (ops) => {
  const cases: GemmCase[] = [
    { M: 129, N: 384, K: 384, lda: 392, ldc: 390, epilogue: 'residual', bias: true, colScale: true }, // mma allowed
    { M: 129, N: 384, K: 384, lda: 385, ldc: 384, epilogue: 'gelu', bias: true, colScale: false }, // lda % 8 != 0
    { M: 65, N: 64, K: 64, lda: 64, ldc: 67, epilogue: 'none', bias: false, colScale: false }, // ldc odd
  ];
  cases.forEach((c, i) => checkGemm(ops, c, 3000 + i, gemmKernels(ops, c.M, c.N, c.K, c.lda!, c.ldc!)));
});

gpuTest('gemm: a forced variant that cannot run the shape throws', (ops) => {
  const M = 17, N = 11, K = 30;
  for (const kernel of kMmaKernels)
    assert.throws(
      () => ops.gemm({ M, N, K, a: new Uint16Array(M * K), w: new Uint16Array(N * K), c: new Float32Array(M * N), kernel }),
      /cannot run/,
      kernel,
    );
  assert.throws(() => ops.gemm({ M, N, K, a: new Uint16Array(M * K), w: new Uint16Array(N * K), kernel: 'simple' }), /exactly one of c/);
});

gpuTest('gemm: rows on the device (mDevice < M bound): the rows past it stay untouched', (ops) => {
  let seed = 4000;
  for (const [M, N, K] of [[129, 384, 384], [big(1025, 257), big(1152, 136), 384], [129, 11, 30]])
    for (const mDevice of [0, 1, 100, M, M + 500]) // M + 500: clamped to the bound
      checkGemm(ops, { M, N, K, epilogue: seed % 2 ? 'residual' : 'gelu', bias: true, colScale: false, mDevice }, seed++,
        gemmKernels(ops, M, N, K, K, N));
});

// ---- attention ---------------------------------------------------------------------------------------

/** One packed batch on every variant and dtype combination, against the CPU op. */
function checkAttention(ops: CudaOps, lengths: number[], H: number, D: number, seed: number): void {
  const offsets = offsetsOf(lengths);
  const batch = lengths.length, A = offsets[batch], C = H * D, scale = 1 / Math.sqrt(D);
  const rand = rng(seed);
  const qkv = randn(A * 3 * C, rand, 1.5);
  const qkvBf16 = toBf16(qkv), qkvRounded = fromBf16(qkvBf16);
  const cpuAttention = (input: Float32Array): Float32Array => {
    const out = poisonF32(A * C);
    cpu.attention({ batch, offsets, heads: H, headDim: D, scale, qkv: input, out });
    return out;
  };
  const exact = cpuAttention(qkv), same = cpuAttention(qkvRounded), plain = roundBf16(same);
  const tolExact = 2 * relL2(plain, exact) + 1e-6, tolSame = 2 * relL2(plain, same) + 1e-6;
  const flashFits = D === 32 || D === 64 || D === 96 || D === 128;
  assert.is(ops.chooseAttention(D), flashFits ? 'flash' : 'naive', `chooseAttention(${D})`);
  const name = `T = [${lengths}], H = ${H}, D = ${D}`;
  const base = { batch, offsets, heads: H, headDim: D, scale };

  const kernels: AttentionKernelName[] = ['auto', 'naive', ...(flashFits ? (['flash'] as const) : [])];
  for (const kernel of kernels) {
    const runs: Record<string, Float32Array> = {};
    for (const input of ['float32', 'bf16'] as const)
      for (const output of ['float32', 'bf16'] as const) {
        const what = `${kernel}, ${input} qkv, ${output} out, ${name}`;
        const inputs = input === 'float32' ? { qkv } : { qkvBf16 };
        let got: Float32Array;
        if (output === 'float32') {
          got = poisonF32(A * C);
          ops.attention({ ...base, ...inputs, out: got, kernel });
        } else {
          const outBf16 = poisonBf16(A * C);
          ops.attention({ ...base, ...inputs, outBf16, kernel });
          got = fromBf16(outBf16);
        }
        runs[`${input} ${output}`] = got;
        assertWithin(relL2(got, exact), tolExact, `${what}, vs CPU on float32 inputs`);
        if (input === 'bf16') assertWithin(relL2(got, same), tolSame, `${what}, vs CPU on the same bf16 inputs`);
        // The naive kernel is float32 throughout (it reads float32 qkv as it is).
        const naive = kernel === 'naive' || (kernel === 'auto' && !flashFits);
        if (naive && output === 'float32')
          assertWithin(relL2(got, input === 'float32' ? exact : same), kFloat32OpTol, `${what}, float32 kernel vs CPU`);
      }
    // flash rounds float32 qkv to bf16 on the way into shared memory: the same tiles as bf16 qkv.
    if (kernel === 'flash') assertBitIdentical(runs['float32 float32'], runs['bf16 float32'], `flash, float32 vs bf16 qkv, ${name}`);
    // An upper bound of T above the real one changes nothing.
    const bounded = poisonF32(A * C);
    ops.attention({ ...base, qkvBf16, out: bounded, kernel, maxSeqlen: Math.max(...lengths) + 100 });
    assertBitIdentical(bounded, runs['bf16 float32'], `${kernel}, maxSeqlen above every T, ${name}`);
  }
}

gpuTest(`attention: uneven packed batches (T = 1, 5, 63, 64, 65, ${big(1025, 193)} and an empty image), D = 32, 64, 96, 128`, (ops) => {
  const lengths = [5, big(1025, 193), 1, 0, 64, 63, 65];
  for (const [H, D] of [[3, 32], [3, 64], [2, 96], [2, 128]]) checkAttention(ops, lengths, H, D, 5000 + D);
});

gpuTest('attention: head dims only the naive kernel runs (D = 8, 80, 200)', (ops) => {
  for (const [H, D] of [[2, 8], [3, 80], [1, 200]]) checkAttention(ops, [1, 33, 70], H, D, 5500 + D);
  assert.throws(() => {
    const offsets = Int32Array.from([0, 4]);
    ops.attention({ batch: 1, offsets, heads: 1, headDim: 80, scale: 1, qkv: new Float32Array(4 * 3 * 80), out: new Float32Array(4 * 80), kernel: 'flash' });
  }, /cannot run/);
});

// ---- layernorm ---------------------------------------------------------------------------------------

gpuTest('layernorm: simple and vec, with and without a row gather, float32 and bf16 out', (ops) => {
  let seed = 6000;
  for (const C of [70, 128, 384, 768, 1024, 1152]) {
    const vec = C % 128 === 0 && C <= 1024;
    assert.is(ops.chooseLayernorm(C), vec ? 'vec' : 'simple', `chooseLayernorm(${C})`);
    const rand = rng(seed++);
    const rows = C === 384 ? big(1025, 129) : 37, xRows = rows + 13, eps = 1e-6;
    const x = randn(xRows * C, rand, 3).map((v, i) => v + (i % C === 0 ? 100 : 0)); // a large mean to centre
    const gamma = randn(C, rand), beta = randn(C, rand);
    const index = Int32Array.from({ length: rows }, () => Math.floor(rand() * xRows));
    for (const rowsIndex of [undefined, index]) {
      const ref = poisonF32(rows * C);
      cpu.layernorm({ rows, C, eps, x, rowsIndex, gamma, beta, y: ref });
      const kernels: LayerNormKernelName[] = ['auto', 'simple', ...(vec ? (['vec'] as const) : [])];
      for (const kernel of kernels) {
        const what = `${kernel}, C = ${C}, ${rowsIndex ? 'gathered' : 'in order'}`;
        const y = poisonF32(rows * C), yBf16 = poisonBf16(rows * C);
        ops.layernorm({ rows, C, eps, x, rowsIndex, gamma, beta, y, yBf16, kernel });
        assertWithin(relL2(y, ref), kFloat32OpTol, what);
        assertBitIdentical(yBf16, toBf16(y), `${what}: bf16 out is the float32 out rounded`);
        const onlyBf16 = poisonBf16(rows * C);
        ops.layernorm({ rows, C, eps, x, rowsIndex, gamma, beta, yBf16: onlyBf16, kernel });
        assertBitIdentical(onlyBf16, yBf16, `${what}: bf16 out alone`);
      }
    }
    if (!vec) assert.throws(() => ops.layernorm({ rows, C, x, gamma, beta, y: new Float32Array(rows * C), kernel: 'vec' }), /kernel vec/);
  }
});

gpuTest('layernorm: rows on the device (rowsDevice < rows bound): the rows past it stay untouched', (ops) => {
  const rand = rng(6500);
  for (const C of [384, 70]) {
    const bound = 64, x = randn(bound * C, rand), gamma = randn(C, rand), beta = randn(C, rand);
    for (const rowsDevice of [0, 37, bound, bound + 9]) {
      const real = Math.min(rowsDevice, bound);
      const ref = poisonF32(bound * C);
      cpu.layernorm({ rows: real, C, eps: 1e-6, x, gamma, beta, y: ref });
      const kernels: LayerNormKernelName[] = ['simple', ...(C % 128 === 0 ? (['vec'] as const) : [])];
      for (const kernel of kernels) {
        const what = `${kernel}, C = ${C}, rowsDevice = ${rowsDevice}`;
        const y = poisonF32(bound * C), yBf16 = poisonBf16(bound * C);
        ops.layernorm({ rows: bound, C, eps: 1e-6, x, gamma, beta, y, yBf16, rowsDevice, kernel });
        assertWithin(relL2(y.subarray(0, real * C), ref.subarray(0, real * C)), kFloat32OpTol, what);
        assertUntouched(y, poisonF32(bound * C), real, C, C, what);
        assertUntouched(yBf16, poisonBf16(bound * C), real, C, C, `${what}, bf16`);
      }
    }
  }
});

// ---- elementwise and token building: bit for bit ---------------------------------------------------------

gpuTest('convert_to_bf16: round to nearest even, bit for bit, every length mod 4', (ops) => {
  const specials = Uint32Array.from([
    0x00000000, 0x80000000, 0x7f800000, 0xff800000, // +-0, +-inf
    0x7f7fffff, 0xff7fffff, // +-max float: rounds to inf
    0x00000001, 0x007fffff, 0x80400000, // subnormals
    0x3f808000, 0x3f818000, 0x3f808001, 0x3f80ffff, // ties to even (down, up), just above a tie, carry
  ]);
  const rand = rng(7000);
  for (const n of [1, 2, 3, 4, 5, 1027, 4096 + 2]) {
    const x = randn(n, rand, 10);
    x.set(new Float32Array(specials.buffer).subarray(0, Math.min(n, specials.length)));
    const y = new Uint16Array(n).fill(0x1234);
    ops.convertToBf16({ x, y });
    assertBitIdentical(y, toBf16(x), `n = ${n}`);
  }
});

gpuTest('image_normalize: bit-identical to the CPU, 3 and 4 channels, with and without padding', (ops) => {
  const rand = rng(7100);
  const mean = [0.485, 0.456, 0.406].map((v) => 255 * v), std = [0.229, 0.224, 0.225].map((v) => 255 * v);
  for (const [h, w, channels, outH, outW] of [[37, 53, 3, 48, 64], [37, 53, 4, 48, 64], [32, 48, 3, 32, 48], [1, 1, 4, 16, 16]] as const) {
    const src = Uint8Array.from({ length: h * w * channels }, () => Math.floor(rand() * 256));
    const params = { src, h, w, channels, mean, std, outH, outW };
    const want = poisonF32(3 * outH * outW), got = poisonF32(3 * outH * outW);
    ops.cpuImageNormalize({ ...params, out: want });
    ops.imageNormalize({ ...params, out: got });
    assertBitIdentical(got, want, `${h} x ${w} x ${channels} -> ${outH} x ${outW}`);
  }
  assert.throws(() => ops.imageNormalize({ src: new Uint8Array(3), h: 1, w: 1, channels: 3, mean, std, out: new Float32Array(3), channelsLast: true }), /planar/);
});

/** Rects covering a gh x gw grid: windows of side 4, 2 or 1 where they fit on their aligned grid, at random. */
function tileRects(image: number, gh: number, gw: number, rand: () => number): number[][] {
  const taken = new Uint8Array(gh * gw), rects: number[][] = [];
  for (let r = 0; r < gh; r++)
    for (let c = 0; c < gw; c++) {
      if (taken[r * gw + c]) continue;
      let size = 1;
      for (const s of [4, 2])
        if (r % s === 0 && c % s === 0 && r + s <= gh && c + s <= gw && rand() < 0.5) {
          let free = true;
          for (let dy = 0; dy < s; dy++) for (let dx = 0; dx < s; dx++) free &&= !taken[(r + dy) * gw + c + dx];
          if (free) { size = s; break; }
        }
      for (let dy = 0; dy < size; dy++) for (let dx = 0; dx < size; dx++) taken[(r + dy) * gw + c + dx] = 1;
      rects.push([image, r, c, size]);
    }
  return rects;
}

gpuTest('patch_gather: bit-identical to the CPU (P = 16 and 14, superpatches), bf16 out, tokens on the device', (ops) => {
  const rand = rng(7200);
  for (const [P, grids] of [[16, [[4, 6], [3, 5]]], [14, [[5, 4], [2, 2]]]] as const) {
    const height = Math.max(...grids.map((g) => g[0])) * P, width = Math.max(...grids.map((g) => g[1])) * P;
    const images = grids.length, row = 3 * P * P;
    const pixels = randn(images * 3 * height * width, rand);
    const rects = Int32Array.from(grids.flatMap(([gh, gw], b) => tileRects(b, gh, gw, rand)).flat());
    const tokens = rects.length / 4;
    for (const tokensDevice of [undefined, 0, Math.floor(tokens / 2), tokens + 3]) {
      const real = tokensDevice === undefined ? tokens : Math.min(tokensDevice, tokens);
      const what = `P = ${P}, ${tokens} tokens, tokensDevice = ${tokensDevice}`;
      const want = poisonF32(tokens * row);
      cpu.patchGather({ images, height, width, patch: P, pixels, tokens: real, rects, out: want });
      const got = poisonF32(tokens * row), gotBf16 = poisonBf16(tokens * row);
      ops.patchGather({ images, height, width, patch: P, pixels, tokens, rects, out: got, outBf16: gotBf16, tokensDevice });
      assertBitIdentical(got, want, what); // rows past the real count: still the poison
      const wantBf16 = poisonBf16(tokens * row);
      wantBf16.set(toBf16(want.subarray(0, real * row)));
      assertBitIdentical(gotBf16, wantBf16, `${what}, bf16`);
    }
  }
});

gpuTest('token_pos_embed: bit-identical to the CPU (prefix tokens, superpatches, grids of two sizes), rows bound above A', (ops) => {
  const rand = rng(7300);
  for (const [C, prefix, withPosPrefix] of [[70, 2, true], [384, 1, false], [64, 0, false]] as const) {
    const grids = [[4, 6], [3, 5]];
    const batch = grids.length;
    const perImage = grids.map(([gh, gw], b) => tileRects(b, gh, gw, rand));
    const rects = Int32Array.from(perImage.flat().flat());
    const R = rects.length / 4;
    const offsets = offsetsOf(perImage.map((r) => prefix + r.length));
    const A = offsets[batch];
    const gridOffset = Int32Array.from([0, grids[0][0] * grids[0][1]]), gridW = Int32Array.from(grids.map((g) => g[1]));
    const params = {
      batch, C, prefix, gridOffset, gridW, offsets, rects,
      prefixTokens: prefix ? randn(prefix * C, rand) : undefined,
      posPrefix: withPosPrefix ? randn(prefix * C, rand) : undefined,
      posGrid: randn((grids[0][0] * grids[0][1] + grids[1][0] * grids[1][1]) * C, rand),
      embedded: randn(R * C, rand),
    };
    for (const rowsBound of [A, A + 7]) {
      const what = `C = ${C}, prefix = ${prefix}, A = ${A}, rowsBound = ${rowsBound}`;
      const want = poisonF32((A + 7) * C), got = poisonF32((A + 7) * C);
      cpu.tokenPosEmbed({ ...params, out: want });
      ops.tokenPosEmbed({ ...params, out: got, rowsBound });
      assertBitIdentical(got, want, what); // rows A .. A + 6: still the poison
    }
  }
});

// ---- token merging, early exits, upsample, conv --------------------------------------------------------
// Integer outputs (rects, token maps, counts, halt flags, offsets, src_row, labels) must be exactly the
// CPU's; copies (unshare, token_compact, token_scatter) and avg_pool (the same additions in the same
// order) bit for bit. Float tolerances:
//   window_score 1e-5 relative per score: the per-patch statistics are the CPU's exactly (integer sums,
//     the same double steps); the window loops are the CPU's float steps; only expf vs std::exp differ
//     (CUDA's expf is within 2 ulp, i.e. 2.4e-7 relative, twice for the product): 1e-5 is 20x that.
//   upsample probs 1e-6 absolute: the interpolated logits are bit-identical (explicit roundings), so
//     each probability differs by expf's 2 ulp on each exponential and on their sum, a few 1e-7 of 1.
//   conv 1e-5 relative L2: at most 27 (stem) or 25 (5 x 5 depthwise) products per output, summed in
//     the CPU's order but with fma contraction on the GPU: a few float32 roundings of the largest
//     partial sum (about 1e-7 relative); 1e-5 is 100x that and 100x below a bf16 rounding.

/** Elementwise |got - want| <= rel * |want| (+ a floor for values near zero). */
function assertClose(got: Float32Array, want: Float32Array, rel: number, abs: number, what: string): void {
  assert.is(got.length, want.length, `${what}: lengths`);
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= rel * Math.abs(want[i]) + abs))
      assert.unreachable(`${what}: element ${i}: got ${got[i]}, want ${want[i]} (difference ${d.toExponential(3)})`);
  }
}

function assertSameInts(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  assert.is(got.length, want.length, `${what}: lengths`);
  for (let i = 0; i < got.length; i++)
    if (got[i] !== want[i]) assert.unreachable(`${what}: first difference at element ${i}: got ${got[i]}, want ${want[i]}`);
}

/** An h x w RGB image of flat colour blocks (side `block` pixels) with noise of amplitude `noise`. */
function blockyImage(h: number, w: number, channels: number, block: number, noise: number, rand: () => number): Uint8Array {
  const img = new Uint8Array(h * w * channels);
  const colours = new Map<number, number[]>();
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const key = Math.floor(y / block) * 10007 + Math.floor(x / block);
      if (!colours.has(key)) colours.set(key, [0, 1, 2].map(() => Math.floor(rand() * 256)));
      const col = colours.get(key)!;
      for (let c = 0; c < channels; c++) {
        const v = c < 3 ? col[c] + (rand() - 0.5) * 2 * noise : 255;
        img[(y * w + x) * channels + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
    }
  return img;
}

const scoreCount = (gh: number, gw: number, sizes: number[]): number =>
  sizes.reduce((a, s) => a + Math.floor(gh / s) * Math.floor(gw / s), 0);

gpuTest('window_score: CPU scores within 1e-5 (odd sizes, 4 channels, one patch, levels past the grid)', (ops) => {
  const rand = rng(8000);
  for (const [h, w, channels, P, sizes, block, noise] of [
    [100, 150, 3, 16, [4, 2], 32, 3], // 7 x 10 patches, image edge inside the last patches
    [224, 224, 4, 16, [8, 4, 2], 64, 0], // flat blocks: many scores exactly 1
    [37, 53, 3, 14, [2], 20, 40],
    [9, 5, 3, 16, [1, 2], 4, 10], // a single 1 x 1 patch grid, a level that fits no window
    [512, 384, 3, 16, [8, 4, 2], 48, 6],
  ] as [number, number, number, number, number[], number, number][]) {
    const gh = Math.ceil(h / P), gw = Math.ceil(w / P), n = scoreCount(gh, gw, sizes);
    const image = blockyImage(h, w, channels, block, noise, rand);
    const params = { image, h, w, channels, patch: P, gh, gw, levels: sizes.length, sizes: Int32Array.from(sizes), colorTau: 8, textureTau: 16 };
    const want = poisonF32(n), got = poisonF32(n);
    cpu.windowScore({ ...params, scores: want });
    ops.windowScore({ ...params, scores: got });
    assertClose(got, want, 1e-5, 1e-30, `${h} x ${w} x ${channels}, P = ${P}, sizes [${sizes}]`);
  }
});

gpuTest('superpatch_select: rects, count and token map exactly the CPU (random scores, odd grids, none / all merged)', (ops) => {
  const rand = rng(8100);
  const cases: [number, number, number[], number[] | 'random'][] = [
    [1, 1, [8, 4, 2], 'random'], [7, 13, [8, 4, 2], 'random'], [33, 17, [8, 4, 2], 'random'], [16, 16, [4, 2], 'random'],
    [9, 30, [6, 3], 'random'], [20, 21, [8, 3, 2], 'random'], [64, 96, [8, 4, 2], 'random'], [130, 70, [8, 4, 2], 'random'],
    [32, 48, [4, 2], [2, 2]], // nothing merged: the dense patch order
    [32, 48, [4, 2], [0, 0]], // everything merged at the largest level
    [33, 47, [4, 2], [0, 0]], // ... and the leftover border at the smaller level and as patches
    [12, 12, [2, 4], [0.5, 0.5]], // smallest level first: still exact coverage, as the CPU
  ];
  for (const [gh, gw, sizes, th] of cases) {
    const n = scoreCount(gh, gw, sizes);
    const scores = Float32Array.from({ length: n }, () => rand());
    if (n > 2) scores[1] = NaN; // never accepted
    const thresholds = Float32Array.from(th === 'random' ? sizes.map(() => 0.3 + 0.5 * rand()) : th);
    const run = (fn: (p: Record<string, unknown>) => void) => {
      const rects = new Int32Array(gh * gw * 4).fill(-7), count = Int32Array.from([-1]), tokenOfPatch = new Int32Array(gh * gw).fill(-9);
      fn({ image: 2, gh, gw, levels: sizes.length, sizes: Int32Array.from(sizes), thresholds, scores, rects, count, tokenOfPatch });
      return { rects, count, tokenOfPatch };
    };
    const want = run((p) => cpu.superpatchSelect(p));
    const got = run((p) => ops.superpatchSelect(p as never));
    const what = `${gh} x ${gw}, sizes [${sizes}], thresholds ${th}`;
    assert.is(got.count[0], want.count[0], `${what}: count`);
    assertSameInts(got.rects.subarray(0, 4 * want.count[0]), want.rects.subarray(0, 4 * want.count[0]), `${what}: rects`);
    assertSameInts(got.tokenOfPatch, want.tokenOfPatch, `${what}: token of patch`);
  }
});

gpuTest('unshare: bit-identical to the CPU (three grids, superpatches, K = 1 and 19), tokens on the device', (ops) => {
  const rand = rng(8200);
  for (const K of [1, 19]) {
    const grids = [[5, 7], [4, 4], [1, 1]];
    const rects = Int32Array.from(grids.flatMap(([gh, gw], b) => tileRects(b, gh, gw, rand)).flat());
    const tokens = rects.length / 4;
    const gridOffset = Int32Array.from([0, 35, 51]), gridW = Int32Array.from(grids.map((g) => g[1]));
    const logits = randn(tokens * K, rand);
    for (const tokensDevice of [undefined, 0, Math.floor(tokens / 2), tokens + 4]) {
      const real = tokensDevice === undefined ? tokens : Math.min(tokensDevice, tokens);
      const want = poisonF32(52 * K), got = poisonF32(52 * K);
      cpu.unshare({ K, tokens: real, rects, logits, gridOffset, gridW, grid: want, mode: 'copy' });
      ops.unshare({ K, tokens, rects, logits, gridOffset, gridW, grid: got, tokensDevice, mode: 'copy' });
      assertBitIdentical(got, want, `K = ${K}, ${tokens} tokens, tokensDevice ${tokensDevice}`); // cells of later tokens: poison
    }
  }
});

gpuTest('token_halt: flags exactly the CPU (ties, top-k, prefix, none / all halting, uneven batches)', (ops) => {
  const rand = rng(8300);
  for (const [lengths, K, prefix, threshold, topK] of [
    [[40, 3, 77], 4, 1, 0.5, 2],
    [[30], 3, 0, 0, 0], // every row halts
    [[25, 25, 0, 1], 5, 1, 0.0, 3], // an empty image and one with only its prefix row
    [[10], 2, 1, 1.01, 5], // none halts
    [[1], 3, 0, 0, 0], // one row
    [[600, 1025, 37], 19, 1, 0.6, 5],
  ] as [number[], number, number, number, number][]) {
    const offsets = offsetsOf(lengths), batch = lengths.length, A = offsets[batch];
    const logits = randn(A * K, rand, 3);
    // Equal confidences: copies of earlier rows (the tie goes to the lower row).
    for (let r = 3; r < A; r += 3) logits.copyWithin(r * K, (r - 2) * K, (r - 1) * K);
    const params = { batch, K, prefix, offsets, logits, threshold, topK };
    const want = new Uint8Array(A).fill(7), got = new Uint8Array(A).fill(7);
    cpu.tokenHalt({ ...params, halt: want });
    ops.tokenHalt({ ...params, halt: got });
    assertSameInts(got, want, `T = [${lengths}], K = ${K}, threshold ${threshold}, topK ${topK}`);
  }
});

gpuTest('token_compact: out, new offsets and src_row exactly the CPU (none / all halted, one left, rows bound above A)', (ops) => {
  const rand = rng(8400);
  for (const [lengths, C, pattern] of [
    [[40, 3, 77], 70, 'random'], [[40, 3, 77], 384, 'none'], [[40, 3, 77], 64, 'all'], [[50, 20], 64, 'one'],
    [[0, 5, 0, 2000], 33, 'random'], [[1], 8, 'none'],
  ] as [number[], number, string][]) {
    const offsets = offsetsOf(lengths), batch = lengths.length, A = offsets[batch];
    const halt = Uint8Array.from({ length: A }, () => (pattern === 'all' ? 1 : pattern === 'none' ? 0 : rand() < 0.6 ? 1 : 0));
    if (pattern === 'one') halt.fill(1), (halt[A - 7] = 0);
    const x = randn(A * C, rand);
    for (const rowsBound of [A, A + 3]) {
      const what = `T = [${lengths}], C = ${C}, ${pattern}, rowsBound ${rowsBound}`;
      const run = (fn: (p: Record<string, unknown>) => void) => {
        const out = poisonF32(A * C), newOffsets = new Int32Array(batch + 1).fill(-3), srcRow = new Int32Array(A).fill(-5);
        fn({ batch, C, offsets, halt, x, out, newOffsets, srcRow, rowsBound });
        return { out, newOffsets, srcRow };
      };
      const want = run((p) => cpu.tokenCompact(p));
      const got = run((p) => ops.tokenCompact(p as never));
      assertSameInts(got.newOffsets, want.newOffsets, `${what}: new offsets`);
      assertSameInts(got.srcRow, want.srcRow, `${what}: src_row`);
      assertBitIdentical(got.out, want.out, `${what}: out`);
    }
  }
});

gpuTest('token_scatter: bit-identical to the CPU (prefix rows -1, mask, K = 1 and 19), rows on the device', (ops) => {
  const rand = rng(8500);
  for (const [rows, K, tableRows, withMask] of [[300, 19, 400, true], [57, 1, 57, false], [1, 5, 3, true]] as const) {
    const order = Array.from({ length: tableRows }, (_, i) => i).sort(() => rand() - 0.5);
    const index = Int32Array.from({ length: rows }, (_, r) => (r % 11 === 0 ? -1 : order[r % tableRows]));
    const mask = withMask ? Uint8Array.from({ length: rows }, () => (rand() < 0.7 ? 1 : 0)) : undefined;
    const src = randn(rows * K, rand);
    for (const rowsDevice of [undefined, Math.max(0, rows - 3)]) {
      const real = rowsDevice ?? rows;
      const want = poisonF32(tableRows * K), got = poisonF32(tableRows * K);
      cpu.tokenScatter({ rows: real, K, src, index, mask, table: want });
      ops.tokenScatter({ rows, K, src, index, mask, table: got, rowsDevice });
      assertBitIdentical(got, want, `rows ${rows}, K = ${K}, mask ${withMask}, rowsDevice ${rowsDevice}`);
    }
  }
});

gpuTest('upsample: labels exactly the CPU (ties to the lowest class), probs within 1e-6', (ops) => {
  const rand = rng(8600);
  for (const [K, gh, gw, P, validH, validW, outH, outW, withProbs] of [
    [19, 7, 10, 16, 100, 150, 333, 500, true], // upsampling to the original size
    [3, 4, 4, 16, 64, 64, 32, 32, true], // downsampling
    [1, 3, 5, 14, 37, 61, 37, 61, true], // one class: label 0, prob 1
    [21, 1, 1, 16, 9, 5, 9, 5, false], // a single patch
    [150, 32, 32, 16, 512, 512, 257, 1023, false],
  ] as [number, number, number, number, number, number, number, number, boolean][]) {
    const logits = randn(gh * gw * K, rand, 2);
    // Exact ties: class 2 copies class 0 in every cell (equal interpolated logits).
    if (K > 2) for (let c = 0; c < gh * gw; c++) logits[c * K + 2] = logits[c * K];
    const params = { K, gh, gw, patch: P, logits, validH, validW, outH, outW };
    const run = (fn: (p: Record<string, unknown>) => void) => {
      const labels = new Int32Array(outH * outW).fill(-1), probs = withProbs ? poisonF32(K * outH * outW) : undefined;
      fn({ ...params, labels, probs });
      return { labels, probs };
    };
    const want = run((p) => cpu.upsample(p));
    const got = run((p) => ops.upsample(p as never));
    const what = `K = ${K}, grid ${gh} x ${gw}, valid ${validH} x ${validW} -> ${outH} x ${outW}`;
    assertSameInts(got.labels, want.labels, `${what}: labels`);
    if (withProbs) assertClose(got.probs!, want.probs!, 0, 1e-6, `${what}: probs`);
  }
});

gpuTest('conv: stem and depthwise (3 x 3 / 5 x 5, stride 1 / 2) within 1e-5 of the CPU; avg_pool bit-identical', (ops) => {
  const rand = rng(8700);
  for (const [batch, inH, inW, inC, outC, kernel, stride, groups, act, bias] of [
    [1, 224, 224, 3, 32, 3, 2, 1, 'relu6', true], // the stem
    [2, 37, 53, 3, 32, 3, 2, 1, 'relu6', true], // odd sizes, two images
    [2, 28, 28, 40, 40, 3, 1, 40, 'relu6', true],
    [1, 29, 31, 24, 24, 5, 2, 24, 'relu6', true],
    [1, 14, 14, 112, 112, 5, 1, 112, 'none', false],
    [1, 1, 1, 8, 8, 3, 1, 8, 'relu6', true], // one pixel: only the centre tap
    [1, 9, 7, 5, 7, 3, 1, 1, 'none', false], // dense, stride 1, no bias
  ] as [number, number, number, number, number, number, number, number, 'none' | 'relu6', boolean][]) {
    const pad = (kernel - 1) / 2;
    const outH = Math.floor((inH + 2 * pad - kernel) / stride) + 1, outW = Math.floor((inW + 2 * pad - kernel) / stride) + 1;
    const x = randn(batch * inH * inW * inC, rand), w = randn(outC * (inC / groups) * kernel * kernel, rand, 0.5);
    const params = { batch, inH, inW, inC, outH, outW, outC, kernel, stride, pad, groups, act, x, w, bias: bias ? randn(outC, rand) : undefined };
    const want = poisonF32(batch * outH * outW * outC), got = poisonF32(batch * outH * outW * outC);
    cpu.conv({ ...params, y: want });
    ops.conv({ ...params, y: got });
    const what = `${batch} x ${inH} x ${inW} x ${inC} -> ${outC}, k ${kernel}, s ${stride}, groups ${groups}, ${act}`;
    assert.ok(got.every((v) => Number.isFinite(v)), `${what}: every output written`);
    assertWithin(relL2(got, want), 1e-5, what);
  }
  for (const [inH, inW, C, factor] of [[16, 24, 1280, 2], [17, 25, 64, 4], [7, 7, 3, 1], [8, 8, 5, 8]]) {
    const outH = Math.floor(inH / factor), outW = Math.floor(inW / factor);
    const x = randn(inH * inW * C, rand);
    const want = poisonF32(outH * outW * C), got = poisonF32(outH * outW * C);
    cpu.avgPool({ inH, inW, C, factor, outH, outW, x, y: want });
    ops.avgPool({ inH, inW, C, factor, outH, outW, x, y: got });
    assertBitIdentical(got, want, `avg_pool ${inH} x ${inW} x ${C} / ${factor}`);
  }
});

test.run();
