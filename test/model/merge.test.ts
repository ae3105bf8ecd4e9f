// Superpatch merging through segment(): off equals dense, nothing accepted equals dense, a constant
// image collapses to the largest windows, batches with uneven token counts equal their images alone.
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadInputError, loadModel, type Model } from '../../lib/index';
import { repoRoot, sharedImages, standIn } from '../helpers/compare';
import { rng } from '../helpers/random';
import { kDefaultMerge } from '../../lib/config';
import { reachLevels } from '../../lib/options';

const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg');
let model: Model;
test.before(async () => {
  model = await loadModel(standIn, { device: 'cpu' });
});
test.after(() => model.dispose());

test('merge: false and thresholds that accept nothing both give the dense model exactly', async () => {
  const dense = await model.segment(demo, { merge: false, logits: true });
  const none = await model.segment(demo, { merge: { thresholds: [2, 2, 2] }, logits: true });
  assert.is(dense.stats.tokens.input, dense.stats.tokens.dense);
  assert.is(none.stats.tokens.input, dense.stats.tokens.dense);
  assert.equal(none.labels, dense.labels);
  assert.equal(none.logits!.data, dense.logits!.data);
  assert.ok(dense.tokenMap.size.every((s) => s === 1));
  assert.ok(dense.tokenMap.index.every((t, i) => t === i));
  assert.ok(Math.abs(dense.stats.gflops - dense.stats.gflopsDense) < 1e-9, 'a dense run costs the dense GFLOPs');
  const merged = await model.segment(demo);
  assert.ok(merged.stats.gflops < dense.stats.gflops && merged.stats.gflopsDense === dense.stats.gflopsDense);
});

test('the default merges the demo photo: fewer tokens, every patch carried once', async () => {
  const r = await model.segment(demo);
  assert.ok(r.stats.tokens.input < r.stats.tokens.dense, `${r.stats.tokens.input} < ${r.stats.tokens.dense}`);
  const { gh, gw, index, size } = r.tokenMap;
  const perLevel = r.stats.tokens.perLevel;
  assert.is(Object.values(perLevel).reduce((a, b) => a + b, 0) + 1, r.stats.tokens.input);
  // the token map's areas add up per token to its side squared
  const area = new Map<number, number>();
  index.forEach((t, i) => area.set(t, (area.get(t) ?? 0) + 1) && assert.ok(size[i] >= 1));
  for (let i = 0; i < gh * gw; i++) assert.is(area.get(index[i]), size[i] * size[i]);
  assert.is(area.size + 1, r.stats.tokens.input);
  assert.ok((r.stats.ms.score ?? -1) >= 0 && (r.stats.ms.select ?? -1) >= 0);
});

test('a constant-colour image with permissive thresholds is exactly its largest windows', async () => {
  const width = 512, height = 384;
  const data = new Uint8Array(width * height * 3).fill(90);
  const r = await model.segment({ data, width, height, channels: 3 }, { size: 512, merge: { thresholds: [0, 0, 0] } });
  // 32 x 24 patches: 4 x 3 windows of 8 x 8
  assert.equal(r.stats.tokens.perLevel, { 8: 12, 4: 0, 2: 0, 1: 0 });
  assert.is(r.stats.tokens.input, 13);
  assert.equal(r.stats.tokens.perBlock, [13, 13, 13, 13]);
  assert.ok(r.tokenMap.size.every((s) => s === 8));
  // the same image at odd sizes: windows past the grid are not merged
  // (levels named: at 300 px the reach rule below would leave the 8 x 8 windows out)
  const odd = await model.segment({ data, width, height, channels: 3 }, { size: 300, merge: { levels: [8, 4, 2], thresholds: [0, 0, 0] } });
  // 300 x 225 -> 19 x 15 patches: 2 x 1 windows of 8, then 4 x 4 windows where free, then 2 x 2
  const { gh, gw } = odd.tokenMap;
  assert.equal([gh, gw], [15, 19]);
  const perLevel = odd.stats.tokens.perLevel;
  const covered = 64 * perLevel[8] + 16 * perLevel[4] + 4 * perLevel[2] + perLevel[1];
  assert.is(covered, gh * gw);
  assert.is(perLevel[8], 2);
});

// Superpatch reach (lib/options.ts reachLevels): levels the call does not name stay only while
// S * inputSize <= max(levels) * size.
test('superpatch reach: on an image resized below the input size, the largest windows are left out', async () => {
  const width = 512, height = 384;
  const data = new Uint8Array(width * height * 3).fill(90);
  const inputSize = model.config.inputSize;
  for (const size of [inputSize, Math.ceil(inputSize / 2), Math.floor(inputSize / 2) - 16, Math.floor(inputSize / 4) - 16]) {
    const r = await model.segment({ data, width, height, channels: 3 }, { size, merge: { thresholds: [0, 0, 0] } });
    const largest = Math.max(...Object.keys(r.stats.tokens.perLevel).map(Number).filter((S) => r.stats.tokens.perLevel[S] > 0));
    const cap = [8, 4, 2].filter((S) => S * inputSize <= 8 * size);
    // a constant image merges as much as the kept levels allow: the largest kept level appears
    assert.is(largest, cap.length ? cap[0] : 1, `size ${size}: largest superpatch side`);
  }
  assert.equal(reachLevels({ ...kDefaultMerge }, 960, 960).levels, [8, 4, 2]);
  assert.equal(reachLevels({ ...kDefaultMerge }, 480, 960), { ...kDefaultMerge, levels: [4, 2], thresholds: [0.7, 0.6] });
  assert.equal(reachLevels({ ...kDefaultMerge }, 320, 960), { ...kDefaultMerge, levels: [2], thresholds: [0.6] });
  assert.is(reachLevels({ ...kDefaultMerge }, 100, 960), false);
  assert.equal(reachLevels({ ...kDefaultMerge }, 2000, 960).levels, [8, 4, 2]);
  // named levels are used as given
  const named = await model.segment({ data, width, height, channels: 3 }, { size: Math.floor(inputSize / 4) - 16, merge: { levels: [8, 4, 2], thresholds: [0, 0, 0] } });
  assert.ok(named.stats.tokens.perLevel[2] > 0 || named.stats.tokens.perLevel[4] > 0 || named.stats.tokens.perLevel[8] > 0);
});

test('a batch with different token counts equals each image alone', async () => {
  const rand = rng(5);
  const noise = { data: new Uint8Array(120 * 80 * 3).map(() => Math.floor(rand() * 256)), width: 120, height: 80, channels: 3 as const };
  const flat = { data: new Uint8Array(300 * 200 * 3).fill(200), width: 300, height: 200, channels: 3 as const };
  const images = [demo, noise, flat, ...sharedImages().slice(0, 1)];
  const batch = await model.segmentBatch(images, { size: 256, logits: true });
  const counts = new Set(batch.map((r) => r.stats.tokens.input / r.stats.tokens.dense));
  assert.ok(counts.size >= 3, 'images merge differently');
  for (let i = 0; i < images.length; i++) {
    const alone = await model.segment(images[i], { size: 256, logits: true });
    assert.equal(batch[i].labels, alone.labels, `image ${i}`);
    assert.equal(batch[i].logits!.data, alone.logits!.data, `image ${i}`);
    assert.equal(batch[i].tokenMap.index, alone.tokenMap.index);
  }
});

test('merge options are checked', async () => {
  const bad: [unknown, RegExp][] = [
    [{ levels: [2, 4] }, /options\.merge\.levels/],
    [{ levels: [8, 4] }, /options\.merge\.thresholds/],
    [{ thresholds: [1, 2] }, /Expected 3 numbers, one per level for options\.merge\.thresholds/],
    [{ policy: 'magic' }, /options\.merge\.policy/],
    [{ colorTau: -1 }, /options\.merge\.colorTau/],
    [{ window: 3 }, /options\.merge\.window/],
    ['yes', /Expected an object for options\.merge/],
  ];
  for (const [merge, pattern] of bad) {
    try {
      await model.segment(demo, { merge } as never);
      assert.unreachable(String(pattern));
    } catch (err) {
      assert.instance(err, BadInputError);
      assert.match((err as Error).message, pattern);
    }
  }
});

test.run();
