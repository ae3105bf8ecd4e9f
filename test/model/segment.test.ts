// segment() end to end, mostly on the small stand-in model (test/fixtures/stand-in, random weights)
// and once on the bundled trained model: inputs of every kind, sizes and aspect ratios, options,
// batches, bad inputs, disposal and the event loop.
import * as fs from 'node:fs';
import * as path from 'node:path';

import sharp from 'sharp';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadInputError, BadModelError, DisposedError, OutOfMemoryError, loadModel, type Model } from '../../lib/index';
import { fixturesDir, rejectsWith, repoRoot, sharedImages, standIn } from '../helpers/compare';
import { randomVit, rng } from '../helpers/random';
import { skip } from '../helpers/skip';
import { readHeaderFromBuffer } from '../../lib/safetensors';
import { toNativeConfig } from '../../lib/config';

const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg');
let model: Model;

test.before(async () => {
  model = await loadModel(standIn, { device: 'cpu' });
});
test.after(() => model.dispose());

test('a model segments the demo image from a path, a Buffer and raw pixels alike', async () => {
  const fromPath = await model.segment(demo);
  assert.is(fromPath.width, 640);
  assert.is(fromPath.height, 427);
  assert.is(fromPath.labels.length, 640 * 427);
  assert.instance(fromPath.labels, Uint8Array);
  assert.equal(fromPath.classes, model.config.classNames);
  assert.ok(fromPath.labels.every((l) => l < model.config.numClasses));
  assert.is(fromPath.stats.device, 'cpu');
  assert.is(fromPath.stats.tokens.dense, 32 * 22 + 1);
  assert.ok(fromPath.stats.tokens.input <= fromPath.stats.tokens.dense); // merging is on by default
  assert.equal(fromPath.stats.tokens.perBlock, Array(4).fill(fromPath.stats.tokens.input));
  assert.ok(fromPath.stats.gflops > 0);
  for (const stage of ['decode', 'normalize', 'embed', 'encoder', 'head', 'unshare', 'upsample', 'total'] as const)
    assert.ok((fromPath.stats.ms[stage] ?? -1) >= 0, stage);

  const fromBuffer = await model.segment(fs.readFileSync(demo));
  assert.equal(fromBuffer.labels, fromPath.labels);

  const { data, info } = await sharp(demo).raw().toBuffer({ resolveWithObject: true });
  const fromRaw = await model.segment({ data, width: info.width, height: info.height, channels: 3 });
  assert.equal(fromRaw.labels, fromPath.labels);

  // RGBA: alpha is ignored
  const rgba = new Uint8Array(info.width * info.height * 4);
  for (let i = 0; i < info.width * info.height; i++) {
    rgba.set(data.subarray(3 * i, 3 * i + 3), 4 * i);
    rgba[4 * i + 3] = i % 251;
  }
  const fromRgba = await model.segment({ data: rgba, width: info.width, height: info.height, channels: 4 });
  assert.equal(fromRgba.labels, fromPath.labels);
});

test('PNG and WebP buffers decode like the JPEG they were made from', async () => {
  const { data, info } = await sharp(demo).raw().toBuffer({ resolveWithObject: true });
  const raw = { raw: { width: info.width, height: info.height, channels: 3 as const } };
  const fromRaw = await model.segment({ data, width: info.width, height: info.height, channels: 3 }, { size: 256 });
  const png = await model.segment(await sharp(data, raw).png().toBuffer(), { size: 256 });
  const webp = await model.segment(await sharp(data, raw).webp({ lossless: true }).toBuffer(), { size: 256 });
  assert.equal(png.labels, fromRaw.labels);
  assert.equal(webp.labels, fromRaw.labels);
});

test('an input too large for the memory limit is an OutOfMemoryError before any work', async () => {
  process.env.STEP_SEG_MEMORY_LIMIT_MB = '4';
  try {
    await model.segment(demo, { size: 2048 });
    assert.unreachable();
  } catch (err) {
    assert.instance(err, OutOfMemoryError);
    assert.match((err as Error).message, /needs about \d+ MiB .* but about 4 MiB is available/);
  } finally {
    delete process.env.STEP_SEG_MEMORY_LIMIT_MB;
  }
});

test('sizes and aspect ratios: labels always come back at the image size', async () => {
  const rand = rng(7);
  for (const [w, h, size] of [
    [1, 1, 16],
    [37, 200, 64],
    [300, 17, 100],
    [129, 129, 129],
    [1000, 40, 256],
  ]) {
    const data = new Uint8Array(w * h * 3).map(() => Math.floor(rand() * 256));
    const r = await model.segment({ data, width: w, height: h, channels: 3 }, { size });
    assert.is(r.width, w);
    assert.is(r.height, h);
    assert.is(r.labels.length, w * h);
    const rw = Math.max(1, Math.round((w * size) / Math.max(w, h))), rh = Math.max(1, Math.round((h * size) / Math.max(w, h)));
    assert.is(r.stats.tokens.dense, Math.ceil(rw / 16) * Math.ceil(rh / 16) + 1, `${w}x${h}@${size}`);
  }
});

test('real photos of several sizes (../shared/images)', async (ctx) => {
  const images = sharedImages();
  if (!images.length) return skip(ctx, '../shared/images is absent');
  for (const file of images) {
    const meta = await sharp(file).metadata();
    const r = await model.segment(file, { size: 256 });
    assert.is(r.width, meta.width);
    assert.is(r.height, meta.height);
    assert.is(r.labels.length, meta.width! * meta.height!);
    // the stand-in's random weights still give more than one class over a real photo
    assert.ok(new Set(r.labels).size > 1, file);
  }
});

test('probabilities and logits agree with the labels', async () => {
  const r = await model.segment(demo, { size: 256, probabilities: true, logits: true });
  const K = model.config.numClasses, n = r.width * r.height;
  assert.equal(r.probabilities!.dims, [K, r.height, r.width]);
  const p = r.probabilities!.data as Float32Array;
  for (let i = 0; i < n; i += 97) {
    let best = 0, sum = 0;
    for (let k = 0; k < K; k++) {
      sum += p[k * n + i];
      if (p[k * n + i] > p[best * n + i]) best = k;
    }
    assert.ok(Math.abs(sum - 1) < 1e-5);
    assert.is(r.labels[i], best);
  }
  // 256 px long side: 256 x 171 -> 16 x 11 patches
  assert.equal(r.logits!.dims, [K, 11, 16]);
  assert.ok((r.logits!.data as Float32Array).every(Number.isFinite));
});

test('a batch equals its images segmented one by one; concurrent calls are safe', async () => {
  const images = [demo, ...sharedImages().slice(0, 2)];
  const rand = rng(3);
  images.push({ data: new Uint8Array(90 * 50 * 3).map(() => Math.floor(rand() * 256)), width: 90, height: 50, channels: 3 } as never);
  const batch = await model.segmentBatch(images, { size: 192 });
  const alone = await Promise.all(images.map((im) => model.segment(im, { size: 192 })));
  assert.is(batch.length, images.length);
  for (let i = 0; i < images.length; i++) {
    assert.equal(batch[i].labels, alone[i].labels, `image ${i}`);
    assert.is(batch[i].stats.tokens.dense, alone[i].stats.tokens.dense);
  }
});

test('bad inputs are BadInputError with what was expected', async () => {
  await rejectsWith(model.segment(Buffer.from('definitely not an image')), BadInputError, /could not be decoded/);
  const jpeg = fs.readFileSync(demo);
  await rejectsWith(model.segment(jpeg.subarray(0, 2000)), BadInputError, /could not be decoded|premature|truncated/i);
  await rejectsWith(model.segment(Buffer.alloc(0)), BadInputError, /empty buffer/);
  await rejectsWith(model.segment('/no/such/image.png'), BadInputError, /cannot read image file/);
  await rejectsWith(model.segment({ data: new Uint8Array(10), width: 4, height: 4, channels: 3 }), BadInputError, /Expected 48 bytes/);
  await rejectsWith(model.segment({ data: new Uint8Array(32), width: 4, height: 4, channels: 2 as 3 }), BadInputError, /channels/);
  await rejectsWith(model.segment(42 as never), BadInputError, /Expected a file path, an encoded image Buffer or raw pixels/);
  await rejectsWith(model.segment(demo, { size: 5 }), BadInputError, /Expected an integer from 16 to 8192 for options\.size but received 5/);
  await rejectsWith(model.segment(demo, { tile: 2 } as never), BadInputError, /options\.tile/);
  await rejectsWith(model.segmentBatch([]), BadInputError, /non-empty array/);
  const dims = [1, 3, 32, 32];
  const nan = new Float32Array(3 * 32 * 32);
  nan[17] = NaN;
  await rejectsWith(model.forwardFeatures({ data: nan, dims }), BadInputError, /pixels\.data\[17\] is NaN/);
  await rejectsWith(model.forwardFeatures({ data: new Float32Array(10), dims }), BadInputError, /Expected 3072 values/);
  await rejectsWith(model.forwardFeatures({ data: new Float32Array(3 * 30 * 32), dims: [1, 3, 30, 32] }), BadInputError, /multiples of the patch size 16/);
  await rejectsWith(model.forwardFeatures({ data: new Float64Array(3072) as never, dims }), BadInputError, /Float32Array/);
});

test('the bundled default model: the trained CamVid ViT with exit heads, segmenting a street scene sensibly', async () => {
  const m = await loadModel(undefined, { device: 'cpu' });
  assert.is(m.config.numClasses, 11);
  assert.ok(m.config.prune, 'exit heads');
  assert.not.ok(m.config.raw.untrained);
  const r = await m.segment(demo, { size: 320 });
  assert.ok(r.stats.tokens.halted.length === 2);
  // the rocket photo's upper third is sky
  let sky = 0, n = 0;
  for (let y = 0; y < r.height / 3; y += 4) for (let x = 0; x < r.width; x += 4) n++, sky += r.classes[r.labels[y * r.width + x]] === 'sky' ? 1 : 0;
  assert.ok(sky / n > 0.5, `sky on ${((100 * sky) / n).toFixed(0)}% of the top third`);
  m.dispose();
});

test('segment() on a features-only model is a BadModelError', async () => {
  const vit = await loadModel(path.join(fixturesDir, 'vit-a'), { device: 'cpu' });
  await rejectsWith(vit.segment(demo), BadModelError, /no segmentation head/);
  vit.dispose();
});

test('device choice: cuda where a GPU is usable, else a rejection with the reason; auto falls back and says why', async () => {
  const { cudaStatus } = await import('../../lib/index');
  const status = await cudaStatus();
  if (status.usable) {
    const m = await loadModel(undefined, { device: 'cuda' });
    assert.is(m.device, 'cuda');
    m.dispose();
  } else {
    try {
      await loadModel(undefined, { device: 'cuda' });
      assert.unreachable('no usable GPU');
    } catch (err) {
      assert.is((err as { code: string }).code, 'ERR_STEP_DEVICE_UNAVAILABLE');
      assert.ok((err as Error).message.includes(status.reason));
    }
    const auto = await loadModel();
    assert.is(auto.device, 'cpu');
    assert.ok(auto.deviceReason && auto.deviceReason.includes(status.reason));
    auto.dispose();
  }
  process.env.STEP_SEG_FORCE_CPU = '1';
  try {
    const forced = await loadModel();
    assert.is(forced.device, 'cpu');
    assert.is(forced.deviceReason, 'STEP_SEG_FORCE_CPU is set');
    forced.dispose();
  } finally {
    delete process.env.STEP_SEG_FORCE_CPU;
  }
});

test('the native GPU model refuses with the probe reason (or builds) when asked directly', async () => {
  const { loadBinding } = await import('../../lib/binding');
  const { cudaStatus } = await import('../../lib/index');
  const status = await cudaStatus();
  const vit = randomVit({ embedDim: 32, depth: 2, numHeads: 2, imgSize: [32, 32], classNames: ['a', 'b'], seed: 4 });
  const model = await loadModel(vit.buffer, { device: 'cpu' });
  const { binding } = loadBinding();
  const header = readHeaderFromBuffer(vit.buffer);
  try {
    const native = await binding.createModel(toNativeConfig(model.config), header.tensors, vit.buffer, header.dataOffset, 'cuda');
    assert.ok(status.usable, 'a GPU model was created without a usable GPU');
    native.dispose();
  } catch (err) {
    assert.not.ok(status.usable, `a usable GPU refused the model: ${(err as Error).message}`);
    assert.is((err as { code: string }).code, 'ERR_STEP_DEVICE_UNAVAILABLE');
    assert.ok((err as Error).message.includes(status.compiled ? status.reason : 'no CUDA backend'), (err as Error).message);
  }
  model.dispose();
});

test('dispose: calls after it reject with DisposedError; a running call completes', async () => {
  const m = await loadModel(standIn, { device: 'cpu' });
  const running = m.segment(demo, { size: 128 });
  m.dispose();
  assert.ok(m.disposed);
  const r = await running;
  assert.is(r.labels.length, 640 * 427);
  await rejectsWith(m.segment(demo), DisposedError, /disposed/);
  await rejectsWith(m.forwardFeatures({ data: new Float32Array(3072), dims: [1, 3, 32, 32] }), DisposedError, /disposed/);
  m.dispose(); // twice is fine

  const m2 = await loadModel(standIn, { device: 'cpu' });
  {
    await using scoped = m2;
    await scoped.segment(demo, { size: 64 });
  }
  assert.ok(m2.disposed);
});

test('the event loop keeps turning while a large image is segmented', async () => {
  let ticks = 0, maxGap = 0, last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 2);
  const t0 = performance.now();
  await model.segment(demo, { size: 1536 }); // 96 x 64 patches: several hundred ms of native work
  const elapsed = performance.now() - t0;
  clearInterval(timer);
  assert.ok(ticks >= 5, `only ${ticks} timer ticks during ${elapsed.toFixed(0)} ms`);
  assert.ok(maxGap < Math.max(250, elapsed / 2), `the event loop stalled for ${maxGap.toFixed(0)} ms`);
});

test.run();
