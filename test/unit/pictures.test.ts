// Pictures of a result (lib/pictures.ts): the overlay at the image's size with the palette blended
// in, and the token picture at the inference size with outlines, early-exit tints and a legend.
import * as path from 'node:path';

import sharp from 'sharp';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel, BadInputError, type Model, type SegmentResult } from '../../lib/index';
import { exitColor, overlay, tokenPicture } from '../../lib/pictures';
import { repoRoot, standIn } from '../helpers/compare';

const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg'); // 640 x 427
const test = suite<{ model: Model; merged: SegmentResult; dense: SegmentResult }>('pictures');

test.before(async (ctx) => {
  ctx.model = await loadModel(standIn, { device: 'cpu' });
  ctx.merged = await ctx.model.segment(demo, { size: 256 });
  ctx.dense = await ctx.model.segment(demo, { size: 256, merge: false });
});
test.after((ctx) => ctx.model.dispose());

async function rejects(fn: () => Promise<unknown>, check: (e: Error) => boolean): Promise<void> {
  try {
    await fn();
  } catch (err) {
    assert.ok(check(err as Error), `unexpected error: ${(err as Error).message}`);
    return;
  }
  assert.unreachable('expected a rejection');
}

async function decode(png: Buffer) {
  const meta = await sharp(png).metadata();
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  return { format: meta.format, width: info.width, height: info.height, channels: info.channels, data };
}

test('overlay is a PNG at the image size, and alpha 1 paints the palette exactly', async ({ model, merged }) => {
  const half = await decode(await overlay(demo, merged, model.config.palette));
  assert.is(half.format, 'png');
  assert.equal([half.width, half.height, half.channels], [640, 427, 3]);
  const full = await decode(await overlay(demo, merged, model.config.palette, { alpha: 1 }));
  for (const i of [0, 1234, 100_000, 640 * 427 - 1]) {
    const c = model.config.palette[merged.labels[i]];
    assert.equal([...full.data.subarray(3 * i, 3 * i + 3)], c, `pixel ${i}`);
  }
  const none = await decode(await overlay(demo, merged, model.config.palette, { alpha: 0 }));
  assert.not.equal(none.data, full.data);
});

test('overlay takes the image as a path, a Buffer or raw pixels', async ({ model, merged }) => {
  const bytes = await sharp(demo).toBuffer();
  const { data, info } = await sharp(demo).rotate().raw().toBuffer({ resolveWithObject: true });
  const raw = { data, width: info.width, height: info.height, channels: info.channels as 3 };
  for (const image of [bytes, raw]) {
    const out = await decode(await overlay(image, merged, model.config.palette));
    assert.equal([out.width, out.height], [640, 427]);
  }
});

test('overlay rejects bad options and a palette without a colour', async ({ model, merged }) => {
  for (const alpha of [-0.1, 1.5, NaN, '0.5'])
    await rejects(() => overlay(demo, merged, model.config.palette, { alpha: alpha as number }), (e: Error) => e instanceof BadInputError && /options\.alpha/.test(e.message));
  await rejects(() => overlay(demo, merged, [[0, 0, 0]]), (e: Error) => e instanceof BadInputError && /palette/.test(e.message));
  await rejects(() => overlay(Buffer.from('not an image'), merged, model.config.palette), (e: Error) => e instanceof BadInputError);
});

test('tokenPicture is the inference size wide, with the legend below', async ({ model, merged }) => {
  const opts = { size: 256, patchSize: model.config.patchSize, depth: model.config.depth };
  const bare = await decode(await tokenPicture(demo, merged, { ...opts, legend: false }));
  assert.equal([bare.width, bare.height, bare.channels], [256, 171, 3]); // 640 x 427 -> 256 x 171
  for (const font of ['auto', 'builtin'] as const) {
    const pic = await decode(await tokenPicture(demo, merged, { ...opts, font }));
    assert.is(pic.format, 'png');
    assert.is(pic.width, 256);
    assert.ok(pic.height > 171 + 10, `legend height ${pic.height - 171}`);
    assert.equal(pic.data.subarray(0, 256 * 171 * 3), bare.data, 'the photo part is the same');
    // the legend has text: near-white pixels on its dark background
    let light = 0;
    for (let i = 256 * 171 * 3; i < pic.data.length; i += 3) if (pic.data[i] > 180 && pic.data[i + 1] > 180 && pic.data[i + 2] > 180) light++;
    assert.ok(light > 50, `${font}: ${light} light pixels in the legend`);
  }
});

test('size defaults to the size the result ran at, else the grid long side x patch size', async ({ model, merged }) => {
  const opts = { patchSize: model.config.patchSize, depth: model.config.depth, legend: false };
  assert.is(merged.tokenMap.inputSize, 256);
  assert.equal(await tokenPicture(demo, merged, opts), await tokenPicture(demo, merged, { ...opts, size: 256 }));
  const { inputSize, ...bare } = merged.tokenMap;
  assert.equal(await tokenPicture(demo, { ...merged, tokenMap: bare }, opts), await tokenPicture(demo, merged, { ...opts, size: 256 }));
  // 250 is no multiple of 16: the grid alone would say 256; the result says 250, the size the model saw
  const odd = await model.segment(demo, { size: 250 });
  const pic = await decode(await tokenPicture(demo, odd, { legend: false }));
  assert.equal([pic.width, pic.height], [250, 167]);
});

test('a segment() result carries patchSize, depth and the size, so tokenPicture needs no options', async ({ model, merged }) => {
  assert.equal([merged.tokenMap.patchSize, merged.tokenMap.depth], [model.config.patchSize, model.config.depth]);
  const explicit = { size: 256, patchSize: model.config.patchSize, depth: model.config.depth };
  assert.equal(await tokenPicture(demo, merged), await tokenPicture(demo, merged, explicit));
});

test('a merged token picture differs from a dense one (outlines go where tokens went)', async ({ model, merged, dense }) => {
  const opts = { size: 256, patchSize: model.config.patchSize, depth: model.config.depth, legend: false };
  assert.ok(merged.stats.tokens.input < dense.stats.tokens.input, 'the demo image merges');
  const a = await decode(await tokenPicture(demo, merged, opts));
  const b = await decode(await tokenPicture(demo, dense, opts));
  assert.is(a.data.length, b.data.length);
  let differ = 0;
  for (let i = 0; i < a.data.length; i++) if (a.data[i] !== b.data[i]) differ++;
  assert.ok(differ > 1000, `${differ} bytes differ`);
  // dense: every patch outlined, so the pixel on the right edge of patch (0, 0) is the outline colour
  const p = 3 * (0 * 256 + 15);
  assert.equal([...b.data.subarray(p, p + 3)], [255, 255, 255]);
});

test('tokens that exit early are tinted by their exit block, final-head tokens are not', async ({ model, dense }) => {
  // a hand-made token map: the bundled model has no exit heads
  const depth = 12, P = model.config.patchSize;
  const { gh, gw } = dense.tokenMap;
  const exitLayer = new Uint8Array(gh * gw).fill(depth);
  exitLayer[gw + 1] = 1; // patch (1, 1) exits after block 1
  const early = { ...dense, tokenMap: { ...dense.tokenMap, exitLayer } };
  const final = { ...dense, tokenMap: { ...dense.tokenMap, exitLayer: new Uint8Array(gh * gw).fill(depth) } };
  const opts = { size: 256, patchSize: P, depth, legend: false };
  const a = await decode(await tokenPicture(demo, early, opts));
  const b = await decode(await tokenPicture(demo, final, opts));
  const at = (img: typeof a, x: number, y: number) => [...img.data.subarray(3 * (y * 256 + x), 3 * (y * 256 + x) + 3)];
  const [x, y] = [P + 5, P + 5]; // inside patch (1, 1), off its outline
  const red = exitColor(1, depth);
  const expect = at(b, x, y).map((v, c) => Math.round(0.55 * v + 0.45 * red[c]));
  assert.equal(at(a, x, y), expect);
  assert.equal(at(a, 2 * P + 5, y), at(b, 2 * P + 5, y), 'the next patch reached the head: untinted');
  // legend items for the early exit and the final head
  const legendA = await decode(await tokenPicture(demo, early, { ...opts, legend: true, font: 'builtin' }));
  const legendB = await decode(await tokenPicture(demo, final, { ...opts, legend: true, font: 'builtin' }));
  assert.ok(legendA.height >= legendB.height);
});

test('exit colours run from red (early) to yellow (last block before the head)', () => {
  assert.equal(exitColor(1, 12), [215, 48, 39]);
  assert.equal(exitColor(11, 12), [254, 224, 144]);
  const mid = exitColor(6, 12);
  assert.ok(mid[1] > 48 && mid[1] < 224);
});

test('tokenPicture checks its options against the result', async ({ model, merged }) => {
  const P = model.config.patchSize, depth = model.config.depth;
  await rejects(() => tokenPicture(demo, merged, { size: 512, patchSize: P, depth }), (e: Error) => e instanceof BadInputError && /options\.size/.test(e.message));
  await rejects(() => tokenPicture(demo, merged, { size: 256, patchSize: 0, depth }), (e: Error) => e instanceof BadInputError && /options\.patchSize/.test(e.message));
  // a token map made by hand, without the model's depth: the option is needed
  const { depth: _, ...noDepth } = merged.tokenMap;
  await rejects(() => tokenPicture(demo, { ...merged, tokenMap: noDepth }, { size: 256, patchSize: P }), (e: Error) => e instanceof BadInputError && /options\.depth/.test(e.message));
  await rejects(
    () => tokenPicture(demo, { ...merged, tokenMap: { ...merged.tokenMap, index: new Int32Array(3) } }, { size: 256, patchSize: P, depth }),
    (e: Error) => e instanceof BadInputError && /result\.tokenMap/.test(e.message),
  );
});

test.run();
