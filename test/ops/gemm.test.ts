// gemm on the case table of scripts/cases/gemm.ts. The CPU op (and attention's bfloat16 path): every
// SIMD kernel, forced through STEP_SEG_GEMM_KERNEL (float32) or STEP_SEG_BF16_KERNEL (bfloat16), each in
// its own process since a kernel is chosen once, against double-precision references
// (test/helpers/op-cases.ts). bfloat16 references round the inputs as the engine does, so the float32
// tolerance applies to both.
//
// The CUDA kernels against the CPU op (the specification), through cudaOps (lib/cuda-ops.ts): every
// variant that choose_gemm_kernel() or a forced `kernel` allows, float32 and bf16 outputs, shapes off
// every tile, outputs poisoned with NaN before each run, and the device-side row count (upper bound >
// real count: the rows past the real count must come back untouched). They run where CUDA (a GPU or
// the emulator, npm run build:emu) is usable and record a skip otherwise (test/helpers/skip.ts);
// STEP_SEG_REQUIRE_CUDA=1 turns that into a failure.
//
// Tolerances of the CUDA kernels (gemm, attention, layernorm). A bf16 kernel is held to STYLE.md's rule:
// its error against a float32 reference at most twice the error of a plain computation in bf16. "Plain"
// is the least any bf16 computation can do: the inputs rounded to bf16, everything in between exact
// (float32 here: the CPU op on the rounded inputs), the output rounded to bf16. The tests compute that
// baseline on their own data, so the bound follows the data instead of a constant (relative L2 of random
// data: about 1.6e-3 for output rounding alone, 2.5e-3 to 6e-3 with input rounding in attention). Two
// forms of the rule are checked:
//   vs the CPU op on the unrounded inputs:  err <= 2 * relL2(bf16(cpu(bf16 inputs)), cpu(inputs))
//   vs the CPU op on the same bf16 inputs:  err <= 2 * relL2(bf16(cpu(bf16 inputs)), cpu(bf16 inputs))
// The second isolates the kernel's own error (the input rounding, shared by every bf16 path, would hide
// an error of its size otherwise). Float32 outputs of the same rounded inputs need no bf16 allowance: the
// GPU and the CPU accumulate in float32 and differ only in the order of the additions, and tensor cores
// truncate instead of rounding (Fasi et al. 2021), about (K / 16) * 2^-23 = 3e-6 at K = 384; 1e-4 leaves
// 30x headroom and is still 15x below a bf16 rounding, so a kernel that loses precision (bf16
// accumulation, a dropped K slice) fails.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { attentionCases } from '../../scripts/cases/attention';
import { gemmCases, gemmCudaDeviceRows, gemmCudaEpilogues, gemmCudaGrid, type GemmCase, kGemmCudaStrides } from '../../scripts/cases/gemm';
import { randn, rng } from '../../scripts/cases/random';
import { assertUntouched, assertWithin, block, poisonF32, relL2 } from '../helpers/compare';
import { big, type CudaOps, fromBf16, type GemmKernelName, gpuTests, poisonBf16, roundBf16, toBf16 } from '../helpers/gpu';
import { runAttentionCase, runGemmCase } from '../helpers/op-cases';
import { skip } from '../helpers/skip';

const kTol = 1e-5;
const info = loadBinding().binding.cpuInfo();

test('gemm, the kernel this machine picks: all cases within 1e-5', () => {
  gemmCases().forEach((c, i) => {
    const err = runGemmCase(c, 100 + i);
    assert.ok(err < kTol, `case ${JSON.stringify(c)}: relative L2 error ${err}`);
  });
});

interface Forced {
  kernel: string;
  bf16Kernel: string;
  errors: number[];
  bf16: number[];
  attention: number[];
  bits: string;
}
function forced(env: Record<string, string>): Forced {
  const script = path.join(__dirname, '..', 'helpers', 'op-cases.ts');
  const out = execFileSync(process.execPath, ['--import', 'tsx', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!) as Forced;
}
function checkAll(name: string, errors: number[], cases: unknown[]): void {
  assert.is(errors.length, cases.length);
  errors.forEach((err, i) => assert.ok(err < kTol, `${name}, case ${JSON.stringify(cases[i])}: relative L2 error ${err}`));
}

for (const kernel of ['generic', 'avx2', 'avx512']) {
  test(`gemm, kernel forced to ${kernel}`, () => {
    const r = forced({ STEP_SEG_GEMM_KERNEL: kernel });
    if (r.kernel !== kernel) console.log(`  note: this CPU cannot run ${kernel}; ${r.kernel} ran instead`);
    checkAll(r.kernel, r.errors, gemmCases());
  });
}

// Each bfloat16 kernel's run keeps its bits of one product, which the twin must reproduce exactly.
const bits: Record<string, string> = {};
for (const kernel of ['avx512bf16', 'generic']) {
  test(`bf16 gemm and attention, kernel forced to ${kernel}`, (ctx) => {
    const r = forced({ STEP_SEG_BF16_KERNEL: kernel });
    const name = kernel === 'generic' ? 'bf16-generic' : kernel;
    if (r.bf16Kernel !== name) return skip(ctx, `this CPU has no ${kernel} kernel (AVX512_BF16): bf16 runs ${r.bf16Kernel}`);
    checkAll(`${name} gemm`, r.bf16, gemmCases());
    checkAll(`${name} attention`, r.attention, attentionCases);
    bits[name] = r.bits;
  });
}

test('bf16: the portable twin gives the AVX512_BF16 kernel bit for bit', (ctx) => {
  if (!bits.avx512bf16 || !bits['bf16-generic']) return skip(ctx, 'needs both bf16 kernels to have run (AVX512_BF16)');
  assert.is(bits['bf16-generic'], bits.avx512bf16);
});

test('bf16 forced off: bf16 requests run float32', () => {
  const r = forced({ STEP_SEG_BF16_KERNEL: 'none' });
  assert.is(r.bf16Kernel, 'none');
  checkAll('none (float32)', r.bf16, gemmCases());
  checkAll('none (float32) attention', r.attention, attentionCases);
});

test('bf16 rounds: against float32 operands the error is that of bfloat16, not of float32', (ctx) => {
  if (info.bf16Kernel === 'none') return skip(ctx, 'no bf16 kernel on this CPU: bf16 runs float32');
  const big = gemmCases().filter((c) => c.M * c.N * c.K >= 1e5);
  assert.ok(big.length > 0);
  for (const c of big) {
    const i = gemmCases().indexOf(c);
    const err = runGemmCase(c, 100 + i, 'bf16', 'fp32');
    assert.ok(err > 3e-4 && err < 2e-2, `case ${JSON.stringify(c)}: relative L2 error against float32 operands ${err}`);
  }
  const err = runAttentionCase(attentionCases[1], 201, 'bf16', 'fp32');
  assert.ok(err > 3e-4 && err < 2e-2, `attention against float32 operands: ${err}`);
});

test('the chosen kernels are reported', () => {
  assert.match(info.gemmKernel, /^(avx512|avx2|generic)$/);
  assert.match(info.bf16Kernel, /^(avx512bf16|none)$/);
});

// ---- CUDA: every variant against the CPU op ------------------------------------------------------------

const cpu = loadBinding().binding.ops;
const gpuTest = gpuTests(test);
const kFloat32Tol = 1e-4; // float32 GEMM out vs CPU on the same bf16 inputs (header)

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


const kernelsOf = (ops: CudaOps, c: GemmCase) => gemmKernels(ops, c.M, c.N, c.K, c.lda ?? c.K, c.ldc ?? c.N);

gpuTest('gemm: M x N x K off every tile, every variant allowed, float32 and bf16 out', (ops) => {
  gemmCudaGrid(big).forEach((c, i) => checkGemm(ops, c, 1000 + i, kernelsOf(ops, c)));
});

gpuTest('gemm: every epilogue, with and without bias and column scale', (ops) => {
  gemmCudaEpilogues().forEach((c, i) => checkGemm(ops, c, 2000 + i, kernelsOf(ops, c)));
});

gpuTest('gemm: row strides (lda, ldc > K, N); unaligned strides fall back to simple', (ops) => {
  kGemmCudaStrides.forEach((c, i) => checkGemm(ops, c, 3000 + i, kernelsOf(ops, c)));
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
  gemmCudaDeviceRows(big).forEach((c, i) => checkGemm(ops, c, 4000 + i, kernelsOf(ops, c)));
});

test.run();
