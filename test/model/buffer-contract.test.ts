// The buffer contract: segment() takes what it reads of the caller's inputs (raw pixels, encoded
// bytes, option arrays) before it returns its Promise, so the caller may overwrite them at once.
import * as path from 'node:path';

import sharp from 'sharp';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel, type Model } from '../../lib/index';
import { repoRoot, standIn } from '../helpers/compare';

const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg');
let model: Model;
let rgb: { data: Buffer; width: number; height: number };

test.before(async () => {
  model = await loadModel(standIn, { device: 'cpu' });
  const { data, info } = await sharp(demo).raw().toBuffer({ resolveWithObject: true });
  rgb = { data, width: info.width, height: info.height };
});
test.after(() => model.dispose());

test('raw RGB and RGBA pixels zeroed right after the call do not change the result', async () => {
  const { width, height } = rgb;
  const reference = (await model.segment({ ...rgb, channels: 3 }, { size: 192 })).labels;
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) rgba.set(rgb.data.subarray(3 * i, 3 * i + 3), 4 * i), (rgba[4 * i + 3] = 255);
  for (let run = 0; run < 6; run++) {
    const mine = Uint8Array.from(rgb.data);
    const mineRgba = rgba.slice();
    const a = model.segment({ data: mine, width, height, channels: 3 }, { size: 192 });
    mine.fill(0);
    const b = model.segment({ data: mineRgba, width, height, channels: 4 }, { size: 192 });
    mineRgba.fill(0);
    assert.equal((await a).labels, reference, `RGB, run ${run}`);
    assert.equal((await b).labels, reference, `RGBA, run ${run}`);
  }
});

test('encoded bytes overwritten right after the call (segment and segmentBatch) do not change the result', async () => {
  const png = await sharp(rgb.data, { raw: { width: rgb.width, height: rgb.height, channels: 3 } }).png().toBuffer();
  const reference = (await model.segment(png, { size: 192 })).labels;
  for (let run = 0; run < 4; run++) {
    const mine = Buffer.from(png);
    const one = model.segment(mine, { size: 192 });
    const batch = model.segmentBatch([mine, mine], { size: 192 });
    mine.fill(0);
    assert.equal((await one).labels, reference, `run ${run}`);
    for (const r of await batch) assert.equal(r.labels, reference, `batch, run ${run}`);
  }
});

test('option arrays changed after the call are not read again', async () => {
  const levels = [4, 2], thresholds = [0.5, 0.5];
  const reference = await model.segment(demo, { size: 192, merge: { levels: [4, 2], thresholds: [0.5, 0.5] } });
  const p = model.segment(demo, { size: 192, merge: { levels, thresholds } });
  levels[0] = 1e9;
  thresholds[1] = NaN;
  const r = await p;
  assert.equal(r.labels, reference.labels);
  assert.equal(r.stats.tokens.perLevel, reference.stats.tokens.perLevel);
});

test('forwardFeatures: pixels and dims overwritten right after the call do not change the result', async () => {
  const data = new Float32Array(2 * 3 * 32 * 48).map((_, i) => Math.sin(i) * 0.5);
  const reference = await model.forwardFeatures({ data, dims: [2, 3, 32, 48] });
  const mine = data.slice(), dims = [2, 3, 32, 48];
  const p = model.forwardFeatures({ data: mine, dims });
  mine.fill(NaN);
  dims[0] = 1e9;
  const r = await p;
  assert.equal(r.dims, reference.dims);
  assert.equal(r.data, reference.data);
});

test.run();
