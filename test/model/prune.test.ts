// Early pruning through segment() on a random model with exit heads after blocks 1 and 2 of 4.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadInputError, loadModel, type Model } from '../../lib/index';
import { relL2, standIn } from '../helpers/compare';
import { randomVit, rng } from '../helpers/random';

const classes = ['a', 'b', 'c', 'd'];
const vit = randomVit({ embedDim: 32, depth: 4, numHeads: 2, imgSize: [64, 64], classNames: classes, inputSize: 96, exitLayers: [1, 2], seed: 3 });
let model: Model;
const rand = rng(17);
const image = (w: number, h: number) => ({ data: new Uint8Array(w * h * 3).map(() => Math.floor(rand() * 256)), width: w, height: h, channels: 3 as const });
const img = image(96, 80);

test.before(async () => {
  model = await loadModel(vit.buffer, { device: 'cpu', precision: 'fp32' });
});
test.after(() => model.dispose());

test('a threshold above 1 equals no pruning', async () => {
  const off = await model.segment(img, { prune: false, logits: true });
  const high = await model.segment(img, { prune: { threshold: 1.5 }, logits: true });
  assert.equal(high.logits!.data, off.logits!.data);
  assert.equal(high.labels, off.labels);
  assert.equal(high.stats.tokens.halted, [0, 0]);
  assert.ok(high.tokenMap.exitLayer.every((l) => l === 4));
});

test('threshold 0 halts everything at the first exit but the top-k context tokens per class', async () => {
  const r = await model.segment(img, { merge: false, prune: { threshold: 0, keepTopK: 2, exitLayers: [1], agree: false } });
  const { perBlock, halted } = r.stats.tokens;
  const patches = 6 * 5;
  assert.is(perBlock[0], patches + 1);
  assert.is(r.stats.tokens.input, patches + 1, 'input tokens count the list entering block 0, not after the exits');
  // context: at most 2 per class, and at least one class present
  assert.ok(perBlock[1] >= 2 && perBlock[1] <= 1 + 2 * classes.length, `${perBlock[1]}`);
  assert.is(halted[0], patches + 1 - perBlock[1]);
  assert.equal(perBlock.slice(1), [perBlock[1], perBlock[1], perBlock[1]]);
  const stayed = r.tokenMap.exitLayer.filter((l) => l === 4).length;
  assert.is(stayed, perBlock[1] - 1);
  const none = await model.segment(img, { merge: false, prune: { threshold: 0, keepTopK: 0, exitLayers: [1], agree: false } });
  assert.equal(none.stats.tokens.perBlock, [patches + 1, 1, 1, 1]); // only the class token goes on
  assert.ok(none.tokenMap.exitLayer.every((l) => l === 1));
});

test('halted tokens keep the logits of the exit head where they halted', async () => {
  // every patch halts at exit 1: the patch-grid logits are exit_heads.1 applied after block 1
  const r = await model.segment(img, { size: 96, merge: false, logits: true, prune: { threshold: 0, keepTopK: 0, exitLayers: [1], agree: false } });
  const { pixelMean, pixelStd } = model.config;
  const H = 80, W = 96, pixels = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < H * W; i++) pixels[c * H * W + i] = (img.data[3 * i + c] / 255 - pixelMean[c]) / pixelStd[c];
  const f = await model.forwardFeatures({ data: pixels, dims: [1, 3, H, W] }, { intermediates: true });
  const x = f.intermediates!.block_0.data as Float32Array; // (1 + 30, C) after block 1
  const C = 32, K = 4, t = vit.tensors;
  const ref = new Float64Array(K * 30);
  for (let p = 0; p < 30; p++) {
    const row = x.subarray((p + 1) * C, (p + 2) * C);
    const mean = row.reduce((a, v) => a + v, 0) / C;
    const varr = row.reduce((a, v) => a + (v - mean) ** 2, 0) / C;
    const h = Array.from(row, (v, c) => ((v - mean) / Math.sqrt(varr + 1e-6)) * t['exit_heads.1.norm.weight'][c] + t['exit_heads.1.norm.bias'][c]);
    for (let k = 0; k < K; k++) ref[k * 30 + p] = h.reduce((a, v, c) => a + v * t['exit_heads.1.head.weight'][k * C + c], t['exit_heads.1.head.bias'][k]);
  }
  assert.equal(r.logits!.dims, [K, 5, 6]);
  assert.ok(relL2(r.logits!.data, ref) < 1e-4, `${relL2(r.logits!.data, ref)}`);
});

test('a batch with uneven halting (and merging) equals its images one by one', async () => {
  const images = [img, image(40, 100), { data: new Uint8Array(96 * 96 * 3).fill(120), width: 96, height: 96, channels: 3 as const }];
  // agreement off for the mechanics; on, the flat grey image agrees everywhere and the others do not
  for (const prune of [{ threshold: 0.6, keepTopK: 1, agree: false }, { threshold: 0, keepTopK: 3, agree: false }, { threshold: 0, keepTopK: 0, agree: true }]) {
    const batch = await model.segmentBatch(images, { prune, logits: true });
    for (let i = 0; i < images.length; i++) {
      const alone = await model.segment(images[i], { prune, logits: true });
      assert.equal(batch[i].logits!.data, alone.logits!.data, `image ${i}`);
      assert.equal(batch[i].tokenMap.exitLayer, alone.tokenMap.exitLayer, `image ${i}`);
    }
    const counts = images.map((_, i) => batch[i].tokenMap.exitLayer.filter((l) => l < 4).length);
    assert.ok(new Set(counts).size > 1, `uneven halting: ${counts}`);
  }
});

test('pruning is timed as its own stage: halt, between the block groups and the head, disjoint from them', async () => {
  const w = 48 + 16 * Math.floor(rand() * 4), h = 48 + 16 * Math.floor(rand() * 3);
  const on = await model.segment(image(w, h), { merge: false, prune: { threshold: rand() } });
  const stages = Object.keys(on.stats.ms);
  assert.equal(
    stages.filter((k) => k !== 'copy' && k !== 'decode' && k !== 'total'),
    ['normalize', 'score', 'select', 'embed', 'blocks 0-0', 'blocks 1-1', 'blocks 2-3', 'halt', 'head', 'unshare', 'upsample'],
  );
  // disjoint stages: their sum cannot exceed the whole call
  const sum = stages.filter((k) => k !== 'total').reduce((a, k) => a + on.stats.ms[k as 'halt']!, 0);
  assert.ok(sum <= on.stats.ms.total + 1e-6, `${sum} > ${on.stats.ms.total}`);
  const off = await model.segment(image(w, h), { merge: false, prune: false });
  assert.is(off.stats.ms.halt, undefined);
  assert.ok(off.stats.ms.encoder! >= 0 && off.stats.ms.unshare! >= 0);
});

test('prune options are checked; a model without exit heads refuses pruning', async () => {
  for (const [prune, pattern] of [
    [{ exitLayers: [3] }, /exitLayers/],
    [{ keepTopK: -1 }, /keepTopK/],
    [{ threshold: 'high' }, /threshold/],
    [{ layers: [1] }, /options\.prune\.layers/],
  ] as [unknown, RegExp][]) {
    try {
      await model.segment(img, { prune } as never);
      assert.unreachable();
    } catch (err) {
      assert.instance(err, BadInputError);
      assert.match((err as Error).message, pattern);
    }
  }
  const plain = await loadModel(standIn, { device: 'cpu' });
  try {
    await plain.segment(img, { prune: { threshold: 0.5 } });
    assert.unreachable();
  } catch (err) {
    assert.match((err as Error).message, /this model has no exit heads/);
  }
  plain.dispose();
});

test.run();
