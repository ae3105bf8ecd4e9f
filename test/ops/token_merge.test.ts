// token_merge ops: superpatch_select coverage on random score maps and odd grids, window_score's
// definition on hand-made images, patch_gather's area downsampling, token_pos_embed's mean position
// embedding, and unshare.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { relL2 } from '../helpers/compare';
import { randn, rng } from '../helpers/random';
import { gridCase, kStepGridCases, unshareBlendRef } from '../helpers/step-cases';

const { ops } = loadBinding().binding;

function select(gh: number, gw: number, sizes: number[], thresholds: number[], scores: Float32Array) {
  const rects = new Int32Array(gh * gw * 4).fill(-7), count = new Int32Array(1), tokenOfPatch = new Int32Array(gh * gw).fill(-1);
  ops.superpatchSelect({
    image: 3, gh, gw, levels: sizes.length, sizes: Int32Array.from(sizes), thresholds: Float32Array.from(thresholds), scores, rects, count, tokenOfPatch,
  });
  return { rects: rects.subarray(0, 4 * count[0]), n: count[0], tokenOfPatch };
}

function scoreCount(gh: number, gw: number, sizes: number[]) {
  return sizes.reduce((a, s) => a + Math.floor(gh / s) * Math.floor(gw / s), 0);
}

test('superpatch_select: exact coverage, order, and largest-first on random score maps', () => {
  const rand = rng(11);
  for (const [gh, gw, sizes] of [
    [1, 1, [8, 4, 2]], [7, 13, [8, 4, 2]], [33, 17, [8, 4, 2]], [16, 16, [4, 2]], [9, 30, [6, 3]], [20, 21, [8, 3, 2]],
  ] as [number, number, number[]][]) {
    const scores = Float32Array.from({ length: scoreCount(gh, gw, sizes) }, () => rand());
    const thresholds = sizes.map(() => 0.3 + 0.5 * rand());
    const { rects, n, tokenOfPatch } = select(gh, gw, sizes, thresholds, scores);
    const cover = new Int32Array(gh * gw);
    let prev = -1;
    for (let t = 0; t < n; t++) {
      const [image, row, col, s] = rects.subarray(4 * t, 4 * t + 4);
      assert.is(image, 3);
      assert.ok(row * gw + col > prev, 'rects in row-major order of their top-left patch');
      prev = row * gw + col;
      assert.ok(row + s <= gh && col + s <= gw, 'inside the grid');
      if (s > 1) {
        const l = sizes.indexOf(s);
        assert.ok(l >= 0 && row % s === 0 && col % s === 0, 'an aligned window of a level');
        let offset = 0;
        for (let i = 0; i < l; i++) offset += Math.floor(gh / sizes[i]) * Math.floor(gw / sizes[i]);
        assert.ok(scores[offset + (row / s) * Math.floor(gw / s) + col / s] >= thresholds[l], 'accepted windows pass the threshold');
      }
      for (let dy = 0; dy < s; dy++)
        for (let dx = 0; dx < s; dx++) {
          cover[(row + dy) * gw + col + dx]++;
          assert.is(tokenOfPatch[(row + dy) * gw + col + dx], t);
        }
    }
    assert.ok(cover.every((c) => c === 1), `every patch covered exactly once (${gh}x${gw})`);
  }
});

test('superpatch_select: nothing accepted is dense; everything accepted is all largest windows', () => {
  const gh = 17, gw = 24, sizes = [8, 4, 2];
  const none = select(gh, gw, sizes, [1.5, 1.5, 1.5], new Float32Array(scoreCount(gh, gw, sizes)).fill(1));
  assert.is(none.n, gh * gw);
  for (let t = 0; t < none.n; t++) assert.equal([...none.rects.subarray(4 * t, 4 * t + 4)], [3, Math.floor(t / gw), t % gw, 1]);
  const all = select(gh, gw, sizes, [0, 0, 0], new Float32Array(scoreCount(gh, gw, sizes)).fill(1));
  // 2 x 3 windows of 8 cover 16 x 24; the last row of 24 patches is left over: 12 windows of 2 cannot
  // fit in one row, so it stays single patches.
  const counts = [0, 0, 0, 0];
  for (let t = 0; t < all.n; t++) counts[[8, 4, 2, 1].indexOf(all.rects[4 * t + 3])]++;
  assert.equal(counts, [6, 0, 0, 24]);
});

test('window_score follows its definition: uniform windows 1, an edge or a colour step lowers the score', () => {
  const P = 16, gh = 4, gw = 4, h = 64, w = 64;
  const image = new Uint8Array(h * w * 3).fill(100);
  for (let y = 0; y < h; y++) for (let x = 32; x < w; x++) image.set([180, 100, 100], 3 * (y * w + x)); // right half redder
  image.set([0, 0, 0], 3 * (5 * w + 5)); // one dark pixel in patch (0, 0)
  const scores = new Float32Array(4 + 1).fill(NaN);
  ops.windowScore({ image, h, w, channels: 3, patch: P, gh, gw, levels: 2, sizes: Int32Array.from([2, 4]), colorTau: 16, textureTau: 32, scores });
  // 2 x 2 windows: (0,0) holds the dark pixel, (0,1) and (1,1) are uniform red, (1,0) uniform grey
  assert.ok(Math.abs(scores[1] - 1) < 1e-6 && Math.abs(scores[2] - 1) < 1e-6 && Math.abs(scores[3] - 1) < 1e-6);
  // Window (0,0): patch (0,0) has one black pixel among 256 grey (100) ones, in every channel.
  //   its texture s_p = sqrt(100^2 * (255/256) * (1/256)); the other patches have 0
  //   its mean 100 - 100/256 sits (3/4) * (100/256) from the window mean, the others (1/4) * (100/256)
  const texture = Math.sqrt(100 * 100 * (255 / 256) * (1 / 256));
  const spread = 0.75 * (100 / 256);
  const expected00 = Math.exp(-((spread / 16) ** 2)) * Math.exp(-((texture / 32) ** 2));
  assert.ok(Math.abs(scores[0] - expected00) < 1e-5, `${scores[0]} vs ${expected00}`);
  // the 4 x 4 window spans grey and red: colour spread 80 * sqrt(1/3) / 2 ... well below 0.5
  assert.ok(scores[4] < 0.5);
});

test('patch_gather: a superpatch is its area average; token_pos_embed adds the mean position embedding', () => {
  const rand = rng(21);
  const P = 4, H = 16, W = 24, C = 5;
  const pixels = randn(2 * 3 * H * W, rand);
  const rectList = [[1, 0, 2, 2], [0, 1, 1, 1], [1, 2, 4, 1], [0, 0, 0, 4]];
  const rects = Int32Array.from(rectList.flat());
  const out = new Float32Array(rectList.length * 3 * P * P).fill(NaN);
  ops.patchGather({ images: 2, height: H, width: W, patch: P, pixels, tokens: rectList.length, rects, out });
  rectList.forEach(([image, row, col, s], t) => {
    for (let c = 0; c < 3; c++)
      for (let ky = 0; ky < P; ky++)
        for (let kx = 0; kx < P; kx++) {
          let sum = 0;
          for (let dy = 0; dy < s; dy++)
            for (let dx = 0; dx < s; dx++) sum += pixels[((image * 3 + c) * H + row * P + ky * s + dy) * W + col * P + kx * s + dx];
          assert.ok(Math.abs(out[t * 3 * P * P + (c * P + ky) * P + kx] - sum / (s * s)) < 1e-5);
        }
  });

  // token_pos_embed: image 0 has rects [0,1,1,1], [0,0,0,4] (reordered below), image 1 the others
  const order = [3, 1, 0, 2];
  const rectsSorted = Int32Array.from(order.flatMap((i) => rectList[i]));
  const embedded = randn(4 * C, rand), prefixTokens = randn(C, rand), posPrefix = randn(C, rand);
  const gh = 4, gw = 6, posGrid = randn(2 * gh * gw * C, rand);
  const offsets = Int32Array.from([0, 3, 6]), result = new Float32Array(6 * C).fill(NaN);
  ops.tokenPosEmbed({
    batch: 2, C, prefix: 1, prefixTokens, posPrefix, posGrid, gridOffset: Int32Array.from([0, gh * gw]), gridW: Int32Array.from([gw, gw]),
    offsets, rects: rectsSorted, embedded, out: result,
  });
  const ref = new Float64Array(6 * C);
  let row = 0;
  for (let b = 0; b < 2; b++) {
    for (let c = 0; c < C; c++) ref[row * C + c] = prefixTokens[c] + posPrefix[c];
    row++;
    order.forEach((i, j) => {
      const [image, r, col, s] = rectList[i];
      if (image !== b) return;
      for (let c = 0; c < C; c++) {
        let pos = 0;
        for (let dy = 0; dy < s; dy++) for (let dx = 0; dx < s; dx++) pos += posGrid[((b * gh + r + dy) * gw + col + dx) * C + c];
        ref[row * C + c] = embedded[j * C + c] + pos / (s * s);
      }
      row++;
    });
  }
  assert.ok(relL2(result, ref) < 1e-6);
});

test("unshare paints each token's logits on every patch it covers", () => {
  const K = 3, gh = 4, gw = 4;
  const rectList = [[0, 0, 0, 2], [0, 0, 2, 1], [0, 0, 3, 1], [0, 1, 2, 1], [0, 1, 3, 1], [0, 2, 0, 2], [0, 2, 2, 2]];
  const logits = Float32Array.from({ length: rectList.length * K }, (_, i) => i);
  const grid = new Float32Array(gh * gw * K).fill(NaN);
  ops.unshare({ K, tokens: rectList.length, rects: Int32Array.from(rectList.flat()), logits, gridOffset: Int32Array.from([0]), gridW: Int32Array.from([gw]), grid, mode: 'copy' });
  rectList.forEach(([, r, c, s], t) => {
    for (let dy = 0; dy < s; dy++)
      for (let dx = 0; dx < s; dx++)
        for (let k = 0; k < K; k++) assert.is(grid[((r + dy) * gw + c + dx) * K + k], t * K + k);
  });
});

const poison = (n: number) => new Float32Array(n).fill(NaN);

test('unshare blend: every cell exactly the float32 reference (random tilings, odd side, no superpatches)', () => {
  const rand = rng(17);
  for (const [grids, sides] of kStepGridCases)
    for (const K of [1, 11]) {
      const c = gridCase(grids, sides, rand), logits = randn(c.tokens * K, rand, 3);
      const grid = poison(c.cells * K), flat = poison(c.cells * K);
      ops.unshare({ K, tokens: c.tokens, rects: c.rects, logits, gridOffset: c.gridOffset, gridW: c.gridW, gridH: c.gridH, grid, flat, mode: 'blend' });
      const want = unshareBlendRef(c, K, logits);
      for (let i = 0; i < want.length; i++)
        if (!Object.is(grid[i], want[i])) assert.unreachable(`grids ${JSON.stringify(grids)}, K = ${K}: element ${i}: ${grid[i]}, want ${want[i]}`);
      if (!sides.length) {  // nothing merged: blend is the copy
        const copy = poison(c.cells * K);
        ops.unshare({ K, tokens: c.tokens, rects: c.rects, logits, gridOffset: c.gridOffset, gridW: c.gridW, grid: copy, mode: 'copy' });
        assert.equal([...grid], [...copy]);
      }
    }
});

test('unshare blend: two 4 x 4 tokens side by side ramp linearly from one centre to the other', () => {
  const rects = Int32Array.from([0, 0, 0, 4, 0, 0, 4, 4]), grid = poison(32), flat = poison(32);
  ops.unshare({ K: 1, tokens: 2, rects, logits: Float32Array.from([0, 1]), gridOffset: Int32Array.from([0]), gridW: Int32Array.from([8]), gridH: Int32Array.from([4]), grid, flat, mode: 'blend' });
  for (let y = 0; y < 4; y++) assert.equal([...grid.subarray(8 * y, 8 * y + 8)], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1]);
});

test.run();
