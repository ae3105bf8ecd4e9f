// The plan of a call (native/core/layout.h): patch grids, tiles, tokens and bytes against numbers
// worked out by hand for the stand-in model (patch 16, embed 64, MLP 256, 11 classes, a class token),
// so that the engine's estimates, which lib/ reserves memory with, cannot drift silently. The bytes
// follow native/core/cost.h: a forward holds 4 * (3 * padded pixels + 930 * cells + 918 * tokens +
// 192 * threads * (largest image's cells + 1) + [learned policy] 80 * largest pixels) + 32 * cells +
// 16 MiB (930 = (C + 2K + 1) + (3 P^2 + C + K), 918 = (8C + Hd + 2K) + 2C); a result holds the labels
// (1 byte a pixel), [probabilities] 44 bytes a pixel, [logits] 44 bytes a cell, and 6 + 44 bytes a cell.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { loadModel } from '../../lib/index';
import { nativeOf } from '../../lib/model';
import { standIn } from '../helpers/compare';

const kMiB16 = 16 * 2 ** 20;

async function withPlanner(body: (native: NonNullable<ReturnType<typeof nativeOf.get>>) => Promise<void> | void): Promise<void> {
  const binding = loadBinding().binding;
  const threads = binding.cpuInfo().threads;
  const model = await loadModel(standIn, { device: 'cpu' });
  binding.setNumThreads(2); // attention's per-thread scratch: 2 threads in every number below
  try {
    await body(nativeOf.get(model)!);
  } finally {
    binding.setNumThreads(threads);
    model.dispose();
  }
}

test('untiled: one forward over the batch, padded to the largest sides; the learned policy adds its CNN', () =>
  withPlanner((native) => {
    // 100 x 60 px: 4 x 7 patches (28 cells); 40 x 90 px: 6 x 3 (18 cells). Batch: 46 cells, 48 tokens,
    // padded to 96 x 112 px twice (21504 px), largest image 28 cells (7168 px).
    const images = [
      { width: 100, height: 60, outWidth: 200, outHeight: 120 },
      { width: 40, height: 90, outWidth: 40, outHeight: 90 },
    ];
    const plan = native.planSegment({ images, learnedPolicy: false, probs: false, logits: false });
    // 4 * (3 * 21504 + 930 * 46 + 918 * 48 + 192 * 2 * 29) + 32 * 46 + 16 MiB
    const forward = 4 * (64512 + 42780 + 44064 + 11136) + 1472 + kMiB16;
    assert.is(forward, 17428656);
    assert.equal(plan.forwards, [{ tokens: 48, bytes: forward, count: 1 }]);
    assert.is(plan.tokens, 48);
    // 24000 px + 50 * 28 cells; 3600 px + 50 * 18 cells
    assert.equal(plan.images, [
      { gh: 4, gw: 7, tiles: 1, bytes: 25400 },
      { gh: 6, gw: 3, tiles: 1, bytes: 4500 },
    ]);
    assert.equal(plan.bytes, { forward, results: 29900 });

    // the learned policy's CNN: 80 floats a pixel of the largest image (7168 px)
    const learned = native.planSegment({ images, learnedPolicy: true, probs: false, logits: false });
    assert.is(learned.bytes.forward, forward + 4 * 80 * 7168);
    assert.is(learned.bytes.forward, 19722416);
    // probabilities (44 bytes a pixel) and logits (44 bytes a cell)
    const all = native.planSegment({ images: images.slice(0, 1), learnedPolicy: false, probs: true, logits: true });
    assert.equal(all.images, [{ gh: 4, gw: 7, tiles: 1, bytes: 25400 + 44 * 24000 + 44 * 28 }]);
    assert.is(all.bytes.results, 1082632);
    // alone, the first image: 28 cells, 29 tokens, 64 x 112 px
    assert.is(all.bytes.forward, 4 * (3 * 7168 + 930 * 28 + 918 * 29 + 192 * 2 * 29) + 32 * 28 + kMiB16);
    assert.is(all.bytes.forward, 17119320);
  }));

test('tiled: origins every stride, the last tile flush with the edge; one tile at a time, plus its crop', () =>
  withPlanner((native) => {
    // 1000 x 700 px: 44 x 63 patches; tiles of 16 patches every 12: rows at 0, 12, 24, 28 (28 + 16 = 44),
    // columns at 0, 12, 24, 36, 47 (47 + 16 = 63): 4 x 5 tiles of 256 cells (257 tokens, 65536 px).
    // 200 x 100 px: 7 x 13 patches, under a tile: one tile of its own grid (91 cells, 92 tokens, 23296 px).
    const images = [
      { width: 1000, height: 700, outWidth: 1000, outHeight: 700 },
      { width: 200, height: 100, outWidth: 200, outHeight: 100 },
    ];
    const tile = { size: 256, stride: 192 };
    const plan = native.planSegment({ images, tile, learnedPolicy: false, probs: false, logits: false });
    // 4 * (3 * 65536 + 930 * 256 + 918 * 257 + 192 * 2 * 257) + 32 * 256 + 16 MiB, and the crop (3 bytes a pixel)
    const big = 4 * (196608 + 238080 + 235926 + 98688) + 8192 + kMiB16 + 3 * 65536;
    const small = 4 * (3 * 23296 + 930 * 91 + 918 * 92 + 192 * 2 * 92) + 32 * 91 + kMiB16 + 3 * 23296;
    assert.is(big, 20059224);
    assert.is(small, 17947224);
    assert.equal(plan.forwards, [
      { tokens: 257, bytes: big, count: 20 },
      { tokens: 92, bytes: small, count: 1 },
    ]);
    assert.is(plan.tokens, 257);
    // results: 700000 px + 50 * 2772 cells, and the running sums' weights (4 bytes a cell)
    assert.equal(plan.images, [
      { gh: 44, gw: 63, tiles: 20, bytes: 700000 + 50 * 2772 + 4 * 2772 },
      { gh: 7, gw: 13, tiles: 1, bytes: 20000 + 50 * 91 + 4 * 91 },
    ]);
    assert.equal(plan.bytes, { forward: big, results: 849688 + 24914 });
    // the learned policy's CNN runs on one tile: 80 floats a tile pixel
    const learned = native.planSegment({ images: images.slice(0, 1), tile, learnedPolicy: true, probs: false, logits: false });
    assert.is(learned.bytes.forward, big + 4 * 80 * 65536);
    assert.is(learned.bytes.forward, 41030744);
  }));

test('the engine runs the tiles the plan counts', async () => {
  const model = await loadModel(standIn, { device: 'cpu' });
  try {
    const data = new Uint8Array(1000 * 700 * 3);
    for (let i = 0; i < data.length; i++) data[i] = (i * 37) & 255;
    // overlap 64 of 256: stride 192 px, as above
    const r = await model.segment({ data, width: 1000, height: 700, channels: 3 }, { size: 1000, tile: { size: 256, overlap: 64 }, merge: false, prune: false });
    const plan = nativeOf.get(model)!.planSegment({
      images: [{ width: 1000, height: 700, outWidth: 1000, outHeight: 700 }],
      tile: { size: 256, stride: 192 },
      learnedPolicy: false,
      probs: false,
      logits: false,
    });
    assert.is(r.stats.tiles, 20);
    assert.is(plan.images[0].tiles, 20);
    assert.is(r.stats.tokens.dense, 20 * 257); // every tile's patches and class token
    assert.equal([r.tokenMap.gh, r.tokenMap.gw], [plan.images[0].gh, plan.images[0].gw]);
  } finally {
    model.dispose();
  }
});

test('forwardFeatures: N images of H x W, prefix tokens each; with intermediates a copy per block', () =>
  withPlanner((native) => {
    // 2 x 3 x 64 x 96: 4 x 6 patches (24 cells) each, 25 tokens each
    const plan = native.planFeatures([2, 3, 64, 96], false);
    assert.is(plan.tokens, 50);
    // 4 * (3 * 12288 + 930 * 48 + 918 * 50 + 192 * 2 * 25) + 32 * 48 + 16 MiB
    assert.is(plan.bytes.forward, 4 * (36864 + 44640 + 45900 + 9600) + 1536 + kMiB16);
    assert.is(plan.bytes.results, 4 * 50 * 64); // the tokens
    // intermediates: the tokens, and a copy after every block (depth 4), the embedding, tokens_0 and the final norm
    assert.is(native.planFeatures([2, 3, 64, 96], true).bytes.results, 4 * 50 * 64 * 8);
  }));

test.run();
