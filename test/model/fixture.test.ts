// Parity with timm: the vit-a fixture (timm 1.0.29, float64 reference) through forwardFeatures.
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel, runtimeInfo } from '../../lib/index';
import { fixturesDir, readSafetensors, relL2 } from '../helpers/compare';
import { skip } from '../helpers/skip';

const dir = path.join(fixturesDir, 'vit-a');

test('vit-a: every intermediate and the final norm match timm to 1e-4', async () => {
  const io = readSafetensors(path.join(dir, 'io.safetensors'));
  const model = await loadModel(dir, { device: 'cpu', precision: 'fp32' });
  const input = io.input_nchw_f32;
  const out = await model.forwardFeatures({ data: input.data as Float32Array, dims: input.dims }, { intermediates: true });
  assert.equal(out.dims, [1, 321, 192]);
  for (const name of ['patch_embed', 'tokens_0', 'block_0', 'block_1', 'block_2', 'final_norm']) {
    const err = relL2(out.intermediates![name].data, io[name].data);
    assert.ok(err < 1e-4, `${name}: relative L2 error ${err}`);
  }
  assert.ok(relL2(out.data, io.final_norm.data) < 1e-4);
  model.dispose();
});

test('vit-a: a batch of two images gives each image its own result', async () => {
  const io = readSafetensors(path.join(dir, 'io.safetensors'));
  const model = await loadModel(dir, { device: 'cpu', precision: 'fp32' });
  const x = io.input_nchw_f32.data as Float32Array;
  const flipped = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) flipped[i] = x[x.length - 1 - i];
  const batch = new Float32Array(2 * x.length);
  batch.set(flipped, 0);
  batch.set(x, x.length);
  const out = await model.forwardFeatures({ data: batch, dims: [2, 3, 256, 320] });
  const alone = await model.forwardFeatures({ data: flipped, dims: [1, 3, 256, 320] });
  const n = 321 * 192;
  assert.ok(relL2(out.data.subarray(n), io.final_norm.data) < 1e-4);
  assert.ok(relL2(out.data.subarray(0, n), alone.data) < 1e-6);
  model.dispose();
});

// bf16 (the default where the CPU has AVX512_BF16): the features stay within the bound of
// 1e-2 (relative L2) of timm's float64 ones, off float32's by more than float32 rounding (bf16 ran),
// and a batch still gives each image exactly its own result.
test('vit-a in bf16: the final norm within 1e-2 of timm, a batch equal to its images alone', async (ctx) => {
  if (runtimeInfo().bf16Kernel === 'none') return skip(ctx, 'no bf16 kernel on this CPU (AVX512_BF16): bf16 runs float32');
  const io = readSafetensors(path.join(dir, 'io.safetensors'));
  const model = await loadModel(dir, { device: 'cpu', precision: 'bf16' });
  assert.is(model.precision, 'bf16');
  const x = io.input_nchw_f32.data as Float32Array;
  const out = await model.forwardFeatures({ data: x, dims: io.input_nchw_f32.dims }, { intermediates: true });
  const err = relL2(out.data, io.final_norm.data);
  assert.ok(err < 1e-2 && err > 1e-4, `final norm: relative L2 error ${err}`);
  for (const name of ['block_0', 'block_1', 'block_2']) {
    const e = relL2(out.intermediates![name].data, io[name].data);
    assert.ok(e < 1e-2, `${name}: relative L2 error ${e}`);
  }
  const batch = new Float32Array(2 * x.length);
  batch.set(x.slice().reverse(), 0);
  batch.set(x, x.length);
  const both = await model.forwardFeatures({ data: batch, dims: [2, 3, 256, 320] });
  assert.ok(relL2(both.data.subarray(321 * 192), out.data) < 1e-6);
  model.dispose();
});

test('precision: bf16 where the CPU has it, else fp32 with the reason; fp32 when asked', async () => {
  const bf16 = await loadModel(dir, { device: 'cpu', precision: 'bf16' });
  const fp32 = await loadModel(dir, { device: 'cpu', precision: 'fp32' });
  const has = runtimeInfo().bf16Kernel !== 'none';
  assert.is(bf16.precision, has ? 'bf16' : 'fp32');
  assert.is(bf16.precisionReason === undefined, has);
  assert.is(fp32.precision, 'fp32');
  assert.is(fp32.precisionReason, undefined);
  bf16.dispose();
  fp32.dispose();
});

test.run();
