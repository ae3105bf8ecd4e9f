// attention, layernorm and upsample against plain double-precision references, on random packed
// lists (uneven images, a single token, a block boundary just crossed: op-cases.ts's table) with
// NaN-poisoned outputs.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { relL2 } from '../helpers/compare';
import { attentionCases, runAttentionCase } from '../helpers/op-cases';
import { randn, rng } from '../helpers/random';

const { ops } = loadBinding().binding;

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

test('layernorm, with and without a row gather', () => {
  const rand = rng(5);
  const rows = 37, C = 70, eps = 1e-6;
  const x = randn(50 * C, rand, 3).map((v, i) => v + (i % C === 0 ? 100 : 0)); // a large mean to centre
  const gamma = randn(C, rand), beta = randn(C, rand);
  const index = Int32Array.from({ length: rows }, () => Math.floor(rand() * 50));
  for (const rowsIndex of [undefined, index]) {
    const y = new Float32Array(rows * C).fill(NaN);
    ops.layernorm({ rows, C, eps, x, rowsIndex, gamma, beta, y });
    const ref = new Float64Array(rows * C);
    for (let r = 0; r < rows; r++) {
      const src = (rowsIndex ? rowsIndex[r] : r) * C;
      let mean = 0, v = 0;
      for (let c = 0; c < C; c++) mean += x[src + c] / C;
      for (let c = 0; c < C; c++) v += (x[src + c] - mean) ** 2 / C;
      for (let c = 0; c < C; c++) ref[r * C + c] = ((x[src + c] - mean) / Math.sqrt(v + eps)) * gamma[c] + beta[c];
    }
    assert.ok(relL2(y, ref) < 1e-5);
  }
});

test('upsample: bilinear from the grid through the resized image, then argmax and softmax', () => {
  const rand = rng(9);
  for (const [gh, gw, K, validH, validW, outH, outW] of [
    [3, 4, 5, 40, 60, 97, 133], // grid covers 48 x 64 padded pixels, 40 x 60 of them image
    [1, 1, 2, 16, 16, 5, 7],
    [2, 5, 300, 32, 70, 16, 35], // downsampling, over 256 classes
  ]) {
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

test.run();
