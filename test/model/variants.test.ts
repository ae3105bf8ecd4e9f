// Other timm VisionTransformer configurations, against PyTorch references made by
// scripts/make_fixtures.py (float64): no class token (bf16 weights), register tokens with
// no_embed_class, layer scale and no qkv bias (f16 weights), and position embeddings resampled to
// another grid.
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { fixturesDir, readSafetensors, relL2 } from '../helpers/compare';

for (const [name, T] of [
  ['vit-noclass', 24],
  ['vit-regs', 12],
  ['vit-resample', 31],
] as const) {
  test(`${name}: final norm and intermediates match PyTorch to 1e-4`, async () => {
    const dir = path.join(fixturesDir, name);
    const io = readSafetensors(path.join(dir, 'io.safetensors'));
    const model = await loadModel(dir, { device: 'cpu', precision: 'fp32' });
    const x = io.input_nchw_f32;
    const out = await model.forwardFeatures({ data: x.data as Float32Array, dims: x.dims }, { intermediates: true });
    assert.equal(out.dims, [1, T, model.config.embedDim]);
    for (const key of Object.keys(io).filter((k) => /^(patch_embed|tokens_0|block_\d+|final_norm)$/.test(k))) {
      const err = relL2(out.intermediates![key].data, io[key].data);
      assert.ok(err < 1e-4, `${name} ${key}: relative L2 error ${err}`);
    }
    model.dispose();
  });
}

test.run();
