// The position-embedding cache is bounded by bytes (STEP_SEG_POS_CACHE_MB): many grid shapes never
// grow it past the limit, the least recently used grids go first, and a grid resampled again after
// eviction gives the same result.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel, type Model } from '../../lib/index';
import { nativeOf } from '../../lib/model';
import { randomVit, rng } from '../helpers/random';

const vit = randomVit({ embedDim: 64, depth: 1, numHeads: 2, imgSize: [32, 32], classNames: ['a', 'b'], seed: 6 });
const rand = rng(2);
const noise = new Uint8Array(400 * 400 * 3).map(() => Math.floor(rand() * 256));
const image = (w: number, h: number) => ({ data: noise.subarray(0, w * h * 3), width: w, height: h, channels: 3 as const });

function info(model: Model) {
  return nativeOf.get(model)!.cacheInfo() as { posEntries: number; posBytes: number; posLimit: number };
}

test('60 grid shapes stay within a 1 MiB cache; evicted grids come back identical', async () => {
  process.env.STEP_SEG_POS_CACHE_MB = '1';
  let model: Model;
  try {
    model = await loadModel(vit.buffer, { device: 'cpu' });
  } finally {
    delete process.env.STEP_SEG_POS_CACHE_MB;
  }
  assert.is(info(model).posLimit, 2 ** 20);
  const opts = { size: 400, merge: false as const, logits: true };
  const first = await model.segment(image(400, 208), opts); // 25 x 13 patches: 83 kB of embeddings
  let peak = 0, grids = 0;
  for (let h = 16; h <= 400; h += 16, grids++) {
    await model.segment(image(400, h), opts); // 25 x (h / 16) patches: up to 160 kB each
    peak = Math.max(peak, info(model).posBytes);
    assert.ok(info(model).posBytes <= 2 ** 20, `${info(model).posBytes} bytes after ${grids + 1} grids`);
  }
  assert.ok(grids >= 25);
  for (let w = 16; w <= 400 && grids < 60; w += 16, grids++) await model.segment(image(w, 400), opts);
  const end = info(model);
  assert.ok(end.posBytes <= 2 ** 20 && peak > 2 ** 19, `peak ${peak}, end ${end.posBytes}`);
  assert.ok(end.posEntries < 60, `${end.posEntries} grids kept`);
  const again = await model.segment(image(400, 208), opts); // evicted long ago: resampled again
  assert.equal(again.logits!.data, first.logits!.data);
  assert.equal(again.labels, first.labels);
  model.dispose();
});

test('the default limit is 64 MiB', async () => {
  const model = await loadModel(vit.buffer, { device: 'cpu' });
  assert.is(info(model).posLimit, 64 * 2 ** 20);
  model.dispose();
});

test.run();
