// token_merge ops on the case table of scripts/cases/token_merge.ts: superpatch_select coverage on
// random score maps and odd grids, window_score's definition on hand-made images, patch_gather's area
// downsampling, token_pos_embed's mean position embedding, and unshare (copy and blend). The CUDA
// kernels against the CPU ops: integer outputs (rects, token maps, counts) exactly, patch_gather,
// token_pos_embed and unshare bit for bit (blend: the box weights times the logits are exact, ops.h);
// window_score within 1e-5 relative per score: the per-patch statistics are the CPU's exactly (integer
// sums, the same double steps), the window loops are the CPU's float steps, only expf vs std::exp differ
// (CUDA's expf is within 2 ulp, i.e. 2.4e-7 relative, twice for the product): 1e-5 is 20x that. Outputs
// poisoned first; real token counts at and below the bound, read on the device. CUDA skips as
// test/ops/gemm.test.ts says.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { randn, rng } from '../../scripts/cases/random';
import {
  gridCase, kPatchGatherCases, kStepGridCases, kSuperpatchSelectCases, kTokenPosEmbedCases, kTokenPosEmbedGrids, kUnshareGrids,
  kUnshareK, kWindowScoreCases, randomTiling,
} from '../../scripts/cases/token_merge';
import { assertClose, assertSameBits, offsetsOf, poisonF32, relL2 } from '../helpers/compare';
import { gpuTests, poisonBf16, toBf16 } from '../helpers/gpu';
import { unshareBlendRef } from '../helpers/step-cases';

const { ops } = loadBinding().binding;

function select(gh: number, gw: number, sizes: number[], thresholds: number[], scores: Float32Array) {
  const rects = new Int32Array(gh * gw * 4).fill(-7), count = new Int32Array(1), tokenOfPatch = new Int32Array(gh * gw).fill(-1);
  ops.superpatchSelect({
    image: 3, gh, gw, levels: Int32Array.from(sizes), thresholds: Float32Array.from(thresholds), scores, rects, count, tokenOfPatch,
  });
  return { rects: rects.subarray(0, 4 * count[0]), n: count[0], tokenOfPatch };
}

function scoreCount(gh: number, gw: number, sizes: number[]) {
  return sizes.reduce((a, s) => a + Math.floor(gh / s) * Math.floor(gw / s), 0);
}

test('superpatch_select: exact coverage, order, and largest-first on random score maps', () => {
  const rand = rng(11);
  for (const [gh, gw, sizes] of kSuperpatchSelectCases.slice(0, 6)) { // odd grids, one patch, levels that fit or not
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
  ops.windowScore({ image, h, w, channels: 3, patch: P, gh, gw, levels: Int32Array.from([2, 4]), colorTau: 16, textureTau: 32, scores });
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

// ---- CUDA against the CPU ops ---------------------------------------------------------------------------

const gpuTest = gpuTests(test);

/** An h x w RGB image of flat colour blocks (side `block` pixels) with noise of amplitude `noise`. */
function blockyImage(h: number, w: number, channels: number, block: number, noise: number, rand: () => number): Uint8Array {
  const img = new Uint8Array(h * w * channels);
  const colours = new Map<number, number[]>();
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const key = Math.floor(y / block) * 10007 + Math.floor(x / block);
      if (!colours.has(key)) colours.set(key, [0, 1, 2].map(() => Math.floor(rand() * 256)));
      const col = colours.get(key)!;
      for (let c = 0; c < channels; c++) {
        const v = c < 3 ? col[c] + (rand() - 0.5) * 2 * noise : 255;
        img[(y * w + x) * channels + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
    }
  return img;
}

gpuTest('patch_gather: bit-identical to the CPU (P = 16 and 14, superpatches), bf16 out, tokens on the device', (gpu) => {
  const rand = rng(7200);
  for (const [P, grids] of kPatchGatherCases) {
    const height = Math.max(...grids.map((g) => g[0])) * P, width = Math.max(...grids.map((g) => g[1])) * P;
    const images = grids.length, row = 3 * P * P;
    const pixels = randn(images * 3 * height * width, rand);
    const rects = Int32Array.from(grids.flatMap(([gh, gw], b) => randomTiling(b, gh, gw, [4, 2], rand)).flat());
    const tokens = rects.length / 4;
    for (const tokensDevice of [undefined, 0, Math.floor(tokens / 2), tokens + 3]) {
      const real = tokensDevice === undefined ? tokens : Math.min(tokensDevice, tokens);
      const what = `P = ${P}, ${tokens} tokens, tokensDevice = ${tokensDevice}`;
      const want = poisonF32(tokens * row);
      ops.patchGather({ images, height, width, patch: P, pixels, tokens: real, rects, out: want });
      const got = poisonF32(tokens * row), gotBf16 = poisonBf16(tokens * row);
      gpu.patchGather({ images, height, width, patch: P, pixels, tokens, rects, out: got, outBf16: gotBf16, tokensDevice });
      assertSameBits(got, want, what); // rows past the real count: still the poison
      const wantBf16 = poisonBf16(tokens * row);
      wantBf16.set(toBf16(want.subarray(0, real * row)));
      assertSameBits(gotBf16, wantBf16, `${what}, bf16`);
    }
  }
});

gpuTest('token_pos_embed: bit-identical to the CPU (prefix tokens, superpatches, grids of two sizes), rows bound above A', (gpu) => {
  const rand = rng(7300);
  for (const [C, prefix, withPosPrefix] of kTokenPosEmbedCases) {
    const grids = kTokenPosEmbedGrids;
    const batch = grids.length;
    const perImage = grids.map(([gh, gw], b) => randomTiling(b, gh, gw, [4, 2], rand));
    const rects = Int32Array.from(perImage.flat().flat());
    const R = rects.length / 4;
    const offsets = offsetsOf(perImage.map((r) => prefix + r.length));
    const A = offsets[batch];
    const gridOffset = Int32Array.from([0, grids[0][0] * grids[0][1]]), gridW = Int32Array.from(grids.map((g) => g[1]));
    const params = {
      batch, C, prefix, gridOffset, gridW, offsets, rects,
      prefixTokens: prefix ? randn(prefix * C, rand) : undefined,
      posPrefix: withPosPrefix ? randn(prefix * C, rand) : undefined,
      posGrid: randn((grids[0][0] * grids[0][1] + grids[1][0] * grids[1][1]) * C, rand),
      embedded: randn(R * C, rand),
    };
    for (const rowsBound of [A, A + 7]) {
      const what = `C = ${C}, prefix = ${prefix}, A = ${A}, rowsBound = ${rowsBound}`;
      const want = poisonF32((A + 7) * C), got = poisonF32((A + 7) * C);
      ops.tokenPosEmbed({ ...params, out: want });
      gpu.tokenPosEmbed({ ...params, out: got, rowsBound });
      assertSameBits(got, want, what); // rows A .. A + 6: still the poison
    }
  }
});

gpuTest('window_score: CPU scores within 1e-5 (odd sizes, 4 channels, one patch, levels past the grid)', (gpu) => {
  const rand = rng(8000);
  for (const [h, w, channels, P, sizes, block, noise] of kWindowScoreCases) {
    const gh = Math.ceil(h / P), gw = Math.ceil(w / P), n = scoreCount(gh, gw, sizes);
    const image = blockyImage(h, w, channels, block, noise, rand);
    const params = { image, h, w, channels, patch: P, gh, gw, levels: Int32Array.from(sizes), colorTau: 8, textureTau: 16 };
    const want = poisonF32(n), got = poisonF32(n);
    ops.windowScore({ ...params, scores: want });
    gpu.windowScore({ ...params, scores: got });
    assertClose(got, want, 1e-5, 1e-30, `${h} x ${w} x ${channels}, P = ${P}, sizes [${sizes}]`);
  }
});

gpuTest('superpatch_select: rects, count and token map exactly the CPU (random scores, odd grids, none / all merged)', (gpu) => {
  const rand = rng(8100);
  for (const [gh, gw, sizes, th] of kSuperpatchSelectCases) {
    const n = scoreCount(gh, gw, sizes);
    const scores = Float32Array.from({ length: n }, () => rand());
    if (n > 2) scores[1] = NaN; // never accepted
    const thresholds = Float32Array.from(th === 'random' ? sizes.map(() => 0.3 + 0.5 * rand()) : th);
    const run = (fn: (p: Record<string, unknown>) => void) => {
      const rects = new Int32Array(gh * gw * 4).fill(-7), count = Int32Array.from([-1]), tokenOfPatch = new Int32Array(gh * gw).fill(-9);
      fn({ image: 2, gh, gw, levels: Int32Array.from(sizes), thresholds, scores, rects, count, tokenOfPatch });
      return { rects, count, tokenOfPatch };
    };
    const want = run((p) => ops.superpatchSelect(p));
    const got = run((p) => gpu.superpatchSelect(p as never));
    const what = `${gh} x ${gw}, sizes [${sizes}], thresholds ${th}`;
    assert.is(got.count[0], want.count[0], `${what}: count`);
    assertSameBits(got.rects.subarray(0, 4 * want.count[0]), want.rects.subarray(0, 4 * want.count[0]), `${what}: rects`);
    assertSameBits(got.tokenOfPatch, want.tokenOfPatch, `${what}: token of patch`);
  }
});

gpuTest('unshare: bit-identical to the CPU (three grids, superpatches, K = 1 and 19), tokens on the device', (gpu) => {
  const rand = rng(8200);
  for (const K of kUnshareK) {
    const grids = kUnshareGrids;
    const rects = Int32Array.from(grids.flatMap(([gh, gw], b) => randomTiling(b, gh, gw, [4, 2], rand)).flat());
    const tokens = rects.length / 4;
    const gridOffset = Int32Array.from([0, 35, 51]), gridW = Int32Array.from(grids.map((g) => g[1]));
    const logits = randn(tokens * K, rand);
    for (const tokensDevice of [undefined, 0, Math.floor(tokens / 2), tokens + 4]) {
      const real = tokensDevice === undefined ? tokens : Math.min(tokensDevice, tokens);
      const want = poisonF32(52 * K), got = poisonF32(52 * K);
      ops.unshare({ K, tokens: real, rects, logits, gridOffset, gridW, grid: want, mode: 'copy' });
      gpu.unshare({ K, tokens, rects, logits, gridOffset, gridW, grid: got, tokensDevice, mode: 'copy' });
      assertSameBits(got, want, `K = ${K}, ${tokens} tokens, tokensDevice ${tokensDevice}`); // cells of later tokens: poison
    }
  }
});

gpuTest('unshare blend: bit-identical to the CPU (random tilings, odd side, no superpatches), tokens on the device', (gpu) => {
  const rand = rng(9100);
  for (const [grids, sides] of kStepGridCases)
    for (const K of [1, 11]) {
      const c = gridCase(grids, sides, rand), logits = randn(c.tokens * K, rand, 3);
      const params = { K, rects: c.rects, logits, gridOffset: c.gridOffset, gridW: c.gridW, gridH: c.gridH, mode: 'blend' as const };
      // the workspace starts the same on both: below a real count under the bound, cells of later
      // tokens are read from it without being copied (and stay poisoned in the grid)
      const start = randn(c.cells * K, rand);
      for (const tokensDevice of [undefined, 0, Math.floor(c.tokens / 2), c.tokens + 4]) {
        const real = tokensDevice === undefined ? c.tokens : Math.min(tokensDevice, c.tokens);
        const want = new Float32Array(c.cells * K).fill(NaN), got = new Float32Array(c.cells * K).fill(NaN);
        ops.unshare({ ...params, tokens: real, grid: want, flat: Float32Array.from(start) });
        gpu.unshare({ ...params, tokens: c.tokens, tokensDevice, grid: got, flat: Float32Array.from(start) });
        assertSameBits(got, want, `grids ${JSON.stringify(grids)}, K = ${K}, tokensDevice ${tokensDevice}`);
      }
    }
});

test.run();
