// upsample without probabilities fills the pixels between four grid corners that share a clear argmax
// at once (their label is the corners' label): it gives the same labels as the per-pixel path (the
// one with probabilities), on random logits, on smooth regions with boundaries, and on near-ties.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { randn, rng } from '../helpers/random';

const { ops } = loadBinding().binding;

function both(K: number, gh: number, gw: number, logits: Float32Array, validH: number, validW: number, outH: number, outW: number) {
  const fast = new Int32Array(outH * outW).fill(-1), slow = new Int32Array(outH * outW).fill(-1);
  ops.upsample({ K, gh, gw, patch: 16, logits, validH, validW, outH, outW, labels: fast });
  ops.upsample({ K, gh, gw, patch: 16, logits, validH, validW, outH, outW, labels: slow, probs: new Float32Array(K * outH * outW) });
  return { fast, slow };
}

test('labels-only upsampling equals the per-pixel path', () => {
  const rand = rng(21);
  for (const [gh, gw, K, validH, validW, outH, outW] of [
    [3, 4, 5, 40, 60, 97, 133],
    [1, 1, 2, 16, 16, 5, 7],
    [2, 5, 300, 32, 70, 16, 35],
    [12, 20, 11, 180, 310, 900, 1550],
  ]) {
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

test.run();
