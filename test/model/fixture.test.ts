// Parity with timm: the vit-a fixture (timm 1.0.29, float64 reference) through forwardFeatures.
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { fixturesDir, readSafetensors, relL2 } from '../helpers/compare';

const dir = path.join(fixturesDir, 'vit-a');

test('vit-a: every intermediate and the final norm match timm to 1e-4', async () => {
  const io = readSafetensors(path.join(dir, 'io.safetensors'));
  const model = await loadModel(dir, { device: 'cpu' });
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
  const model = await loadModel(dir, { device: 'cpu' });
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

test.run();
