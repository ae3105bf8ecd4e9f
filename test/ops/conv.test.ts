// conv and avg_pool on the case table of scripts/cases/conv.ts, CUDA against the CPU op: the stem and
// depthwise convolutions (3 x 3 / 5 x 5, stride 1 / 2), within 1e-5 relative L2: at most 27 (stem) or
// 25 (5 x 5 depthwise) products per output, summed in the CPU's order but with fma contraction on the
// GPU: a few float32 roundings of the largest partial sum (about 1e-7 relative); 1e-5 is 100x that and
// 100x below a bf16 rounding. avg_pool bit for bit (the same additions in the same order). CUDA skips
// as test/ops/gemm.test.ts says.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { kAvgPoolCases, kConvCases } from '../../scripts/cases/conv';
import { randn, rng } from '../../scripts/cases/random';
import { assertSameBits, assertWithin, poisonF32, relL2 } from '../helpers/compare';
import { gpuTests } from '../helpers/gpu';

const cpu = loadBinding().binding.ops;
const gpuTest = gpuTests(test);

gpuTest('conv: stem and depthwise (3 x 3 / 5 x 5, stride 1 / 2) within 1e-5 of the CPU; avg_pool bit-identical', (ops) => {
  const rand = rng(8700);
  for (const [batch, inH, inW, inC, outC, kernel, stride, groups, act, bias] of kConvCases) {
    const pad = (kernel - 1) / 2;
    const outH = Math.floor((inH + 2 * pad - kernel) / stride) + 1, outW = Math.floor((inW + 2 * pad - kernel) / stride) + 1;
    const x = randn(batch * inH * inW * inC, rand), w = randn(outC * (inC / groups) * kernel * kernel, rand, 0.5);
    const params = { batch, inH, inW, inC, outH, outW, outC, kernel, stride, pad, groups, act, x, w, bias: bias ? randn(outC, rand) : undefined };
    const want = poisonF32(batch * outH * outW * outC), got = poisonF32(batch * outH * outW * outC);
    cpu.conv({ ...params, y: want });
    ops.conv({ ...params, y: got });
    const what = `${batch} x ${inH} x ${inW} x ${inC} -> ${outC}, k ${kernel}, s ${stride}, groups ${groups}, ${act}`;
    assert.ok(got.every((v) => Number.isFinite(v)), `${what}: every output written`);
    assertWithin(relL2(got, want), 1e-5, what);
  }
  for (const [inH, inW, C, factor] of kAvgPoolCases) {
    const outH = Math.floor(inH / factor), outW = Math.floor(inW / factor);
    const x = randn(inH * inW * C, rand);
    const want = poisonF32(outH * outW * C), got = poisonF32(outH * outW * C);
    cpu.avgPool({ inH, inW, C, factor, outH, outW, x, y: want });
    ops.avgPool({ inH, inW, C, factor, outH, outW, x, y: got });
    assertSameBits(got, want, `avg_pool ${inH} x ${inW} x ${C} / ${factor}`);
  }
});

test.run();
