// The upsample stem on the case table of scripts/cases/upsample.ts. upsample: bilinear from the grid
// through the resized image, then argmax and softmax, against a plain double-precision reference; the
// labels-only path (which fills the pixels between four grid corners that share a clear argmax at once)
// gives the per-pixel path's labels, on random logits, smooth regions with boundaries and near-ties;
// the CUDA kernel against the CPU op: labels exactly (ties to the lowest class), probs within 1e-6
// absolute (the interpolated logits are bit-identical, explicit roundings, so each probability differs
// by expf's 2 ulp on each exponential and on their sum, a few 1e-7 of 1). pos_resample against
// torch.nn.functional.interpolate(bicubic, antialias=True), the resampling timm applies to position
// embeddings, downward and upward (fixture: vit-resample/io.safetensors). CUDA skips as
// test/ops/gemm.test.ts says.
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { randn, rng } from '../../scripts/cases/random';
import { kUpsampleCpuCases, kUpsampleCudaCases } from '../../scripts/cases/upsample';
import { assertClose, assertSameBits, fixturesDir, poisonF32, readSafetensors, relL2 } from '../helpers/compare';
import { gpuTests } from '../helpers/gpu';

const { ops } = loadBinding().binding;

test('upsample: bilinear from the grid through the resized image, then argmax and softmax', () => {
  const rand = rng(9);
  for (const [gh, gw, K, validH, validW, outH, outW] of kUpsampleCpuCases.slice(0, 3)) {
    const logits = randn(gh * gw * K, rand, 2);
    const labels = new Int32Array(outH * outW).fill(-1), probs = new Float32Array(K * outH * outW).fill(NaN);
    ops.upsample({ K, gh, gw, patch: 16, logits, validH, validW, outH, outW, labels, probs });
    const coord = (x: number, valid: number, out: number, grid: number) => {
      const g = Math.max((x + 0.5) * (valid / out / 16) - 0.5, 0);
      const i0 = Math.min(Math.floor(g), grid - 1), i1 = Math.min(i0 + 1, grid - 1);
      return [i0, i1, g - i0] as const;
    };
    let mismatches = 0;
    const refProbs = new Float64Array(K * outH * outW);
    for (let y = 0; y < outH; y++)
      for (let x = 0; x < outW; x++) {
        const [y0, y1, fy] = coord(y, validH, outH, gh), [x0, x1, fx] = coord(x, validW, outW, gw);
        const v = new Float64Array(K);
        let best = 0;
        for (let k = 0; k < K; k++) {
          const at = (r: number, c: number) => logits[(r * gw + c) * K + k];
          v[k] = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
          if (v[k] > v[best]) best = k;
        }
        let sum = 0;
        for (let k = 0; k < K; k++) sum += Math.exp(v[k] - v[best]);
        for (let k = 0; k < K; k++) refProbs[k * outH * outW + y * outW + x] = Math.exp(v[k] - v[best]) / sum;
        if (labels[y * outW + x] !== best) mismatches++;
      }
    assert.is(mismatches, 0);
    assert.ok(relL2(probs, refProbs) < 1e-5);
  }
});

// ---- labels only ----------------------------------------------------------------------------------------

function both(K: number, gh: number, gw: number, logits: Float32Array, validH: number, validW: number, outH: number, outW: number) {
  const fast = new Int32Array(outH * outW).fill(-1), slow = new Int32Array(outH * outW).fill(-1);
  ops.upsample({ K, gh, gw, patch: 16, logits, validH, validW, outH, outW, labels: fast });
  ops.upsample({ K, gh, gw, patch: 16, logits, validH, validW, outH, outW, labels: slow, probs: new Float32Array(K * outH * outW) });
  return { fast, slow };
}

test('labels-only upsampling equals the per-pixel path', () => {
  const rand = rng(21);
  for (const [gh, gw, K, validH, validW, outH, outW] of kUpsampleCpuCases) {
    // random logits
    const { fast, slow } = both(K, gh, gw, randn(gh * gw * K, rand, 2), validH, validW, outH, outW);
    assert.equal(fast, slow, `random ${gh}x${gw}x${K}`);
    // regions: one class per block of cells with a clear margin, and a few exact and near ties
    const blocks = new Float32Array(gh * gw * K);
    for (let i = 0; i < gh; i++)
      for (let j = 0; j < gw; j++) {
        const c = (Math.floor(i / 3) * 7 + Math.floor(j / 4)) % K;
        for (let k = 0; k < K; k++) blocks[(i * gw + j) * K + k] = k === c ? 3 : rand() - 0.5;
        if ((i + j) % 5 === 0) blocks[(i * gw + j) * K + ((c + 1) % K)] = 3; // an exact tie
        if ((i + j) % 7 === 0) blocks[(i * gw + j) * K + ((c + 2) % K)] = 3 - 1e-7; // a near tie
      }
    const r = both(K, gh, gw, blocks, validH, validW, outH, outW);
    assert.equal(r.fast, r.slow, `blocks ${gh}x${gw}x${K}`);
    assert.ok(r.fast.every((l) => l >= 0 && l < K));
  }
});

// ---- pos_resample ---------------------------------------------------------------------------------------

const io = readSafetensors(path.join(fixturesDir, 'vit-resample', 'io.safetensors'));

for (const key of ['pos_dst_down', 'pos_dst_up']) {
  test(`pos_resample ${io.pos_src.dims.join('x')} -> ${io[key].dims.join('x')}`, () => {
    const [srcH, srcW, C] = io.pos_src.dims;
    const [dstH, dstW] = io[key].dims;
    const dst = new Float32Array(dstH * dstW * C).fill(NaN);
    ops.posResample({ C, srcH, srcW, src: io.pos_src.data, dstH, dstW, dst });
    const err = relL2(dst, io[key].data);
    assert.ok(err < 1e-5, `relative L2 error ${err}`);
  });
}

test('pos_resample to the same size is the identity', () => {
  const [srcH, srcW, C] = io.pos_src.dims;
  const dst = new Float32Array(srcH * srcW * C).fill(NaN);
  ops.posResample({ C, srcH, srcW, src: io.pos_src.data, dstH: srcH, dstW: srcW, dst });
  assert.ok(relL2(dst, io.pos_src.data) < 1e-6);
});

// ---- CUDA against the CPU op ----------------------------------------------------------------------------

const gpuTest = gpuTests(test);

gpuTest('upsample: labels exactly the CPU (ties to the lowest class), probs within 1e-6', (gpu) => {
  const rand = rng(8600);
  for (const [K, gh, gw, P, validH, validW, outH, outW, withProbs] of kUpsampleCudaCases) {
    const logits = randn(gh * gw * K, rand, 2);
    // Exact ties: class 2 copies class 0 in every cell (equal interpolated logits).
    if (K > 2) for (let c = 0; c < gh * gw; c++) logits[c * K + 2] = logits[c * K];
    const params = { K, gh, gw, patch: P, logits, validH, validW, outH, outW };
    const run = (fn: (p: Record<string, unknown>) => void) => {
      const labels = new Int32Array(outH * outW).fill(-1), probs = withProbs ? poisonF32(K * outH * outW) : undefined;
      fn({ ...params, labels, probs });
      return { labels, probs };
    };
    const want = run((p) => ops.upsample(p));
    const got = run((p) => gpu.upsample(p as never));
    const what = `K = ${K}, grid ${gh} x ${gw}, valid ${validH} x ${validW} -> ${outH} x ${outW}`;
    assertSameBits(got.labels, want.labels, `${what}: labels`);
    if (withProbs) assertClose(got.probs!, want.probs!, 0, 1e-6, `${what}: probs`);
  }
});

test.run();
