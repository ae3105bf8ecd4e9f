// Large images: a 20000 x 14000 JPEG (more pixels than sharp's default limit) decodes shrunk on load
// and segments, with labels at its own size or at outputSize; sliding-window tiles run it at 10000 px
// within a memory budget that refuses the untiled forward at 8192, and tiles blend their logits as
// mmsegmentation's slide mode does.
import sharp from 'sharp';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { OutOfMemoryError, loadModel, type Model } from '../../lib/index';
import { standIn } from '../helpers/compare';
import { rng } from '../helpers/random';

let model: Model;
let jpeg: Buffer;

test.before(async () => {
  model = await loadModel(standIn, { device: 'cpu' });
  // sky with a red block: quick to encode, 280 M pixels
  const block = await sharp({ create: { width: 3000, height: 2000, channels: 3, background: { r: 200, g: 60, b: 40 } } }).png().toBuffer();
  jpeg = await sharp({ create: { width: 20000, height: 14000, channels: 3, background: { r: 90, g: 140, b: 200 } }, limitInputPixels: false })
    .composite([{ input: block, top: 6000, left: 8000 }])
    .jpeg({ quality: 30, optimiseCoding: false })
    .toBuffer();
});
test.after(() => model.dispose());

test('a 20000 x 14000 JPEG segments; labels at its own size, or at outputSize', async () => {
  const r = await model.segment(jpeg);
  assert.is(r.width, 20000);
  assert.is(r.height, 14000);
  assert.is(r.labels.length, 20000 * 14000);
  assert.is(r.stats.tokens.dense, 32 * 23 + 1); // resized to the model's 512: 512 x 358
  const K = model.config.numClasses;
  for (let i = 0; i < r.labels.length; i += 9973) assert.ok(r.labels[i] < K);
  const small = await model.segment(jpeg, { outputSize: 2000 });
  assert.is(small.width, 2000);
  assert.is(small.height, 1400);
  assert.is(small.labels.length, 2000 * 1400);
  // the same label map, sampled: a pixel at the centre of a 10 x 10 block of the full one
  let agree = 0, n = 0;
  for (let y = 5; y < 1400; y += 37) for (let x = 5; x < 2000; x += 41) n++, (agree += small.labels[y * 2000 + x] === r.labels[(y * 10 + 5) * 20000 + x * 10 + 5] ? 1 : 0);
  assert.ok(agree / n > 0.98, `${agree} of ${n}`);
});

test('tiles: 10000 px with 512 px tiles fits a budget the untiled forward at 8192 does not', async () => {
  process.env.STEP_SEG_MEMORY_LIMIT_MB = '1500';
  try {
    try {
      await model.segment(jpeg, { size: 8192, merge: false });
      assert.unreachable('the untiled forward at 8192 fits 1500 MiB');
    } catch (err) {
      assert.instance(err, OutOfMemoryError);
      assert.match((err as Error).message, /the forward/);
    }
    const r = await model.segment(jpeg, { size: 10000, tile: { size: 512, overlap: 128 } });
    assert.is(r.width, 20000);
    assert.is(r.height, 14000);
    // 10000 x 7000 px, 625 x 438 patches; tiles of 32 patches every 24: 26 x 18
    assert.is(r.stats.tiles, 26 * 18);
    assert.is(r.tokenMap.gh, 438);
    assert.is(r.tokenMap.gw, 625);
    assert.ok(r.stats.tokens.input < r.stats.tokens.dense / 10, `STEP on smooth tiles: ${r.stats.tokens.input} of ${r.stats.tokens.dense} tokens`);
  } finally {
    delete process.env.STEP_SEG_MEMORY_LIMIT_MB;
  }
});

test('tiled logits are the average of each tile run alone, over the overlaps (slide mode)', async () => {
  const rand = rng(12);
  const W = 640, H = 320;
  const data = new Uint8Array(W * H * 3).map(() => Math.floor(rand() * 256));
  const image = { data, width: W, height: H, channels: 3 as const };
  const tiled = await model.segment(image, { size: W, merge: false, logits: true, tile: { size: 320, overlap: 64 } });
  assert.is(tiled.stats.tiles, 3); // x = 0, 256, 320 (the last flush with the edge)
  const K = model.config.numClasses, gw = W / 16, gh = H / 16;
  const sum = new Float64Array(K * gh * gw), count = new Float64Array(gh * gw);
  for (const x0 of [0, 256, 320]) {
    const crop = new Uint8Array(320 * H * 3);
    for (let y = 0; y < H; y++) crop.set(data.subarray((y * W + x0) * 3, (y * W + x0 + 320) * 3), y * 320 * 3);
    const alone = await model.segment({ data: crop, width: 320, height: H, channels: 3 }, { size: 320, merge: false, logits: true });
    const l = alone.logits!.data as Float32Array, tw = 20;
    for (let k = 0; k < K; k++)
      for (let i = 0; i < gh; i++)
        for (let j = 0; j < tw; j++) sum[k * gh * gw + i * gw + x0 / 16 + j] += l[k * gh * tw + i * tw + j];
    for (let i = 0; i < gh; i++) for (let j = 0; j < tw; j++) count[i * gw + x0 / 16 + j]++;
  }
  const got = tiled.logits!.data as Float32Array;
  let worst = 0;
  for (let k = 0; k < K; k++)
    for (let c = 0; c < gh * gw; c++) worst = Math.max(worst, Math.abs(got[k * gh * gw + c] - sum[k * gh * gw + c] / count[c]));
  assert.ok(worst < 1e-5, `largest difference ${worst}`);
  // a single tile covering the whole image is the untiled forward exactly
  const whole = await model.segment(image, { size: 320, logits: true, tile: { size: 320 } });
  const plain = await model.segment(image, { size: 320, logits: true });
  assert.equal(whole.logits!.data, plain.logits!.data);
  assert.equal(whole.labels, plain.labels);
});

test('tile options are checked', async () => {
  for (const tile of [2, { size: 100 }, { size: 8 }, { size: 512, overlap: 512 }, { size: 512, overlap: -1 }, { size: 512, extra: 1 }])
    try {
      await model.segment(jpeg, { tile } as never);
      assert.unreachable(JSON.stringify(tile));
    } catch (err) {
      assert.is((err as { code: string }).code, 'ERR_STEP_BAD_INPUT');
      assert.match((err as Error).message, /options\.tile/);
    }
  try {
    await model.segment(jpeg, { size: 10000 });
    assert.unreachable();
  } catch (err) {
    assert.match((err as Error).message, /an integer from 16 to 8192 for options\.size/);
  }
});

test.run();
