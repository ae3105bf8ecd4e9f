// attention on the case table of scripts/cases/attention.ts. The CPU op against a plain double-precision
// reference on random packed lists (uneven images, a single token, a block boundary just crossed) with
// NaN-poisoned outputs, float32 and bf16 (test/ops/gemm.test.ts forces each bf16 kernel).
//
// The CUDA kernels against the CPU op: every variant choose_attention_kernel() or a forced `kernel`
// allows, float32 and bf16 qkv and out, uneven batches with an empty image, an upper bound of T above
// every T; skips as test/ops/gemm.test.ts says. bf16 tolerances: the rule in test/ops/gemm.test.ts's
// header. Emulated in double precision, FlashAttention's extra rounding (P to bf16 before P V) costs
// 0.3x to 1x the output rounding, so 2x holds with margin at every T and D here. Float32 attention
// (naive): 2e-5, twice the CPU test's bound against double.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import {
  attentionCases, attentionCudaLengths, kAttentionCudaHeads, kAttentionNaiveHeads, kAttentionNaiveLengths,
} from '../../scripts/cases/attention';
import { randn, rng } from '../../scripts/cases/random';
import { assertSameBits, assertWithin, offsetsOf, poisonF32, relL2 } from '../helpers/compare';
import { type AttentionKernelName, big, type CudaOps, fromBf16, gpuTests, poisonBf16, roundBf16, toBf16 } from '../helpers/gpu';
import { runAttentionCase } from '../helpers/op-cases';

for (const [i, c] of attentionCases.entries()) {
  test(`attention: ${c.name}`, () => {
    const err = runAttentionCase(c, 200 + i);
    assert.ok(err < 1e-5, `relative L2 error ${err}`);
  });
  // bf16 (the kernel this CPU picks; test/ops/gemm.test.ts forces each): against operands rounded
  // as the engine rounds them, or against float32 where this CPU has no bf16 kernel
  test(`attention bf16: ${c.name}`, () => {
    const ran = loadBinding().binding.cpuInfo().bf16Kernel === 'none' ? 'fp32' : 'bf16';
    const err = runAttentionCase(c, 200 + i, 'bf16', ran);
    assert.ok(err < 1e-5, `relative L2 error ${err}`);
  });
}

// ---- CUDA: every variant against the CPU op ------------------------------------------------------------

const cpu = loadBinding().binding.ops;
const gpuTest = gpuTests(test);
const kFloat32OpTol = 2e-5; // float32 attention (naive) vs CPU

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
    if (kernel === 'flash') assertSameBits(runs['float32 float32'], runs['bf16 float32'], `flash, float32 vs bf16 qkv, ${name}`);
    // An upper bound of T above the real one changes nothing.
    const bounded = poisonF32(A * C);
    ops.attention({ ...base, qkvBf16, out: bounded, kernel, maxSeqlen: Math.max(...lengths) + 100 });
    assertSameBits(bounded, runs['bf16 float32'], `${kernel}, maxSeqlen above every T, ${name}`);
  }
}

gpuTest(`attention: uneven packed batches (T = 1, 5, 63, 64, 65, ${big(1025, 193)} and an empty image), D = 32, 64, 96, 128`, (ops) => {
  const lengths = attentionCudaLengths(big);
  for (const [H, D] of kAttentionCudaHeads) checkAttention(ops, lengths, H, D, 5000 + D);
});

gpuTest('attention: head dims only the naive kernel runs (D = 8, 80, 200)', (ops) => {
  for (const [H, D] of kAttentionNaiveHeads) checkAttention(ops, kAttentionNaiveLengths, H, D, 5500 + D);
  assert.throws(() => {
    const offsets = Int32Array.from([0, 4]);
    ops.attention({ batch: 1, offsets, heads: 1, headDim: 80, scale: 1, qkv: new Float32Array(4 * 3 * 80), out: new Float32Array(4 * 80), kernel: 'flash' });
  }, /cannot run/);
});

test.run();
