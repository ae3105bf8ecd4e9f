// pos_resample against torch.nn.functional.interpolate(bicubic, antialias=True), the resampling timm
// applies to position embeddings, downward and upward (fixture: vit-resample/io.safetensors).
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { fixturesDir, readSafetensors, relL2 } from '../helpers/compare';

const io = readSafetensors(path.join(fixturesDir, 'vit-resample', 'io.safetensors'));
const { ops } = loadBinding().binding;

for (const key of ['pos_dst_down', 'pos_dst_up']) {
  test(`pos_resample ${io.pos_src.dims.join('x')} -> ${io[key].dims.join('x')}`, () => {
    const [srcH, srcW, C] = io.pos_src.dims;
    const [dstH, dstW] = io[key].dims;
    const dst = new Float32Array(dstH * dstW * C).fill(NaN);
    ops.posResample({ C, srcH, srcW, src: io.pos_src.data, dstH, dstW, dst });
    const err = relL2(dst, io[key].data);
    assert.ok(err < 1e-5, `relative L2 error ${err}`);
  });
}

test('pos_resample to the same size is the identity', () => {
  const [srcH, srcW, C] = io.pos_src.dims;
  const dst = new Float32Array(srcH * srcW * C).fill(NaN);
  ops.posResample({ C, srcH, srcW, src: io.pos_src.data, dstH: srcH, dstW: srcW, dst });
  assert.ok(relL2(dst, io.pos_src.data) < 1e-6);
});

test.run();
