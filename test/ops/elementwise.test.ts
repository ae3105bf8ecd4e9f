// The elementwise ops on the case table of scripts/cases/elementwise.ts, CUDA against the CPU (bit for
// bit): convert_to_bf16 against toBf16 (round to nearest even, every length mod 4, special values) and
// image_normalize against the CPU op (3 and 4 channels, with and without padding, planar and channels
// last: the learned policy's trunk reads channels last). CUDA skips as
// test/ops/gemm.test.ts says.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { kBf16Lengths, kBf16Specials, kImagenetMean, kImagenetStd, kImageNormalizeCases } from '../../scripts/cases/elementwise';
import { randn, rng } from '../../scripts/cases/random';
import { assertSameBits, poisonF32 } from '../helpers/compare';
import { gpuTests, toBf16 } from '../helpers/gpu';

const gpuTest = gpuTests(test);

gpuTest('convert_to_bf16: round to nearest even, bit for bit, every length mod 4', (ops) => {
  const rand = rng(7000);
  for (const n of kBf16Lengths) {
    const x = randn(n, rand, 10);
    x.set(new Float32Array(kBf16Specials.buffer).subarray(0, Math.min(n, kBf16Specials.length)));
    const y = new Uint16Array(n).fill(0x1234);
    ops.convertToBf16({ x, y });
    assertSameBits(y, toBf16(x), `n = ${n}`);
  }
});

gpuTest('image_normalize: bit-identical to the CPU, 3 and 4 channels, with and without padding, planar and channels last', (ops) => {
  const rand = rng(7100);
  const mean = kImagenetMean, std = kImagenetStd;
  for (const [h, w, channels, outH, outW, channelsLast] of kImageNormalizeCases) {
    const src = Uint8Array.from({ length: h * w * channels }, () => Math.floor(rand() * 256));
    const params = { src, h, w, channels, mean, std, outH, outW, channelsLast };
    const want = poisonF32(3 * outH * outW), got = poisonF32(3 * outH * outW);
    ops.cpuImageNormalize({ ...params, out: want });
    ops.imageNormalize({ ...params, out: got });
    assertSameBits(got, want, `${h} x ${w} x ${channels} -> ${outH} x ${outW}${channelsLast ? ', channels last' : ''}`);
  }
  // the two layouts differ (a layout the kernel ignored would pass neither case above, but say so)
  const src = Uint8Array.from({ length: 2 * 2 * 3 }, (_, i) => 10 * i);
  const planar = new Float32Array(12), last = new Float32Array(12);
  ops.imageNormalize({ src, h: 2, w: 2, channels: 3, mean, std, outH: 2, outW: 2, out: planar });
  ops.imageNormalize({ src, h: 2, w: 2, channels: 3, mean, std, outH: 2, outW: 2, out: last, channelsLast: true });
  assert.is(last[1], planar[4], 'pixel 0, channel 1');
});

test.run();
