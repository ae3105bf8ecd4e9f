// layernorm on the case table of scripts/cases/norm.ts: the CPU op against a plain double-precision
// reference, with and without a row gather, NaN-poisoned output; the CUDA kernels (simple, vec) against
// the CPU op, float32 within 2e-5 (twice the CPU test's bound against double), bf16 out the float32 out
// rounded, bit for bit, and rows on the device. CUDA skips as test/ops/gemm.test.ts says.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import {
  kLayernormCudaWidths, kLayernormDeviceBound, kLayernormDeviceRows, kLayernormDeviceWidths, layernormCudaRows,
} from '../../scripts/cases/norm';
import { randn, rng } from '../../scripts/cases/random';
import { assertSameBits, assertUntouched, assertWithin, poisonF32, relL2 } from '../helpers/compare';
import { big, gpuTests, type LayerNormKernelName, poisonBf16, toBf16 } from '../helpers/gpu';

const { ops } = loadBinding().binding;

test('layernorm against a float64 reference', () => {
  const rand = rng(5);
  const rows = 37, C = 70, eps = 1e-6;
  const x = randn(rows * C, rand, 3).map((v, i) => v + (i % C === 0 ? 100 : 0)); // a large mean to centre
  const gamma = randn(C, rand), beta = randn(C, rand);
  const y = new Float32Array(rows * C).fill(NaN);
  ops.layernorm({ rows, C, eps, x, gamma, beta, y });
  const ref = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    const src = r * C;
    let mean = 0, v = 0;
    for (let c = 0; c < C; c++) mean += x[src + c] / C;
    for (let c = 0; c < C; c++) v += (x[src + c] - mean) ** 2 / C;
    for (let c = 0; c < C; c++) ref[r * C + c] = ((x[src + c] - mean) / Math.sqrt(v + eps)) * gamma[c] + beta[c];
  }
  assert.ok(relL2(y, ref) < 1e-5);
});

// ---- CUDA: simple and vec against the CPU op -----------------------------------------------------------

const cpu = ops;
const gpuTest = gpuTests(test);
const kFloat32OpTol = 2e-5; // float32 layernorm vs CPU

gpuTest('layernorm: simple and vec, float32 and bf16 out', (gpu) => {
  let seed = 6000;
  for (const C of kLayernormCudaWidths) {
    const vec = C % 128 === 0 && C <= 1024;
    assert.is(gpu.chooseLayernorm(C), vec ? 'vec' : 'simple', `chooseLayernorm(${C})`);
    const rand = rng(seed++);
    const rows = layernormCudaRows(C, big), xRows = rows + 13, eps = 1e-6; // x longer than rows: the rest is not read
    const x = randn(xRows * C, rand, 3).map((v, i) => v + (i % C === 0 ? 100 : 0)); // a large mean to centre
    const gamma = randn(C, rand), beta = randn(C, rand);
    const ref = poisonF32(rows * C);
    cpu.layernorm({ rows, C, eps, x, gamma, beta, y: ref });
    const kernels: LayerNormKernelName[] = ['auto', 'simple', ...(vec ? (['vec'] as const) : [])];
    for (const kernel of kernels) {
      const what = `${kernel}, C = ${C}`;
      const y = poisonF32(rows * C), yBf16 = poisonBf16(rows * C);
      gpu.layernorm({ rows, C, eps, x, gamma, beta, y, yBf16, kernel });
      assertWithin(relL2(y, ref), kFloat32OpTol, what);
      assertSameBits(yBf16, toBf16(y), `${what}: bf16 out is the float32 out rounded`);
      const onlyBf16 = poisonBf16(rows * C);
      gpu.layernorm({ rows, C, eps, x, gamma, beta, yBf16: onlyBf16, kernel });
      assertSameBits(onlyBf16, yBf16, `${what}: bf16 out alone`);
    }
    if (!vec) assert.throws(() => gpu.layernorm({ rows, C, x, gamma, beta, y: new Float32Array(rows * C), kernel: 'vec' }), /kernel vec/);
  }
});

gpuTest('layernorm: rows on the device (rowsDevice < rows bound): the rows past it stay untouched', (gpu) => {
  const rand = rng(6500);
  for (const C of kLayernormDeviceWidths) {
    const bound = kLayernormDeviceBound, x = randn(bound * C, rand), gamma = randn(C, rand), beta = randn(C, rand);
    for (const rowsDevice of kLayernormDeviceRows) {
      const real = Math.min(rowsDevice, bound);
      const ref = poisonF32(bound * C);
      cpu.layernorm({ rows: real, C, eps: 1e-6, x, gamma, beta, y: ref });
      const kernels: LayerNormKernelName[] = ['simple', ...(C % 128 === 0 ? (['vec'] as const) : [])];
      for (const kernel of kernels) {
        const what = `${kernel}, C = ${C}, rowsDevice = ${rowsDevice}`;
        const y = poisonF32(bound * C), yBf16 = poisonBf16(bound * C);
        gpu.layernorm({ rows: bound, C, eps: 1e-6, x, gamma, beta, y, yBf16, rowsDevice, kernel });
        assertWithin(relL2(y.subarray(0, real * C), ref.subarray(0, real * C)), kFloat32OpTol, what);
        assertUntouched(y, poisonF32(bound * C), real, C, C, what);
        assertUntouched(yBf16, poisonBf16(bound * C), real, C, C, `${what}, bf16`);
      }
    }
  }
});

test.run();
