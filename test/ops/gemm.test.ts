// gemm (and attention's bfloat16 path): every SIMD kernel, forced through STEP_SEG_GEMM_KERNEL
// (float32) or STEP_SEG_BF16_KERNEL (bfloat16), each in its own process since a kernel is chosen once,
// against double-precision references on the shared case tables (test/helpers/op-cases.ts). bfloat16
// references round the inputs as the engine does, so the float32 tolerance applies to both.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { skip } from '../helpers/skip';
import { attentionCases, gemmCases, runAttentionCase, runGemmCase } from '../helpers/op-cases';

const kTol = 1e-5;
const info = loadBinding().binding.cpuInfo();

test('gemm, the kernel this machine picks: all cases within 1e-5', () => {
  gemmCases().forEach((c, i) => {
    const err = runGemmCase(c, 100 + i);
    assert.ok(err < kTol, `case ${JSON.stringify(c)}: relative L2 error ${err}`);
  });
});

interface Forced {
  kernel: string;
  bf16Kernel: string;
  errors: number[];
  bf16: number[];
  attention: number[];
  bits: string;
}
function forced(env: Record<string, string>): Forced {
  const script = path.join(__dirname, '..', 'helpers', 'op-cases.ts');
  const out = execFileSync(process.execPath, ['--import', 'tsx', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!) as Forced;
}
function checkAll(name: string, errors: number[], cases: unknown[]): void {
  assert.is(errors.length, cases.length);
  errors.forEach((err, i) => assert.ok(err < kTol, `${name}, case ${JSON.stringify(cases[i])}: relative L2 error ${err}`));
}

for (const kernel of ['generic', 'avx2', 'avx512']) {
  test(`gemm, kernel forced to ${kernel}`, () => {
    const r = forced({ STEP_SEG_GEMM_KERNEL: kernel });
    if (r.kernel !== kernel) console.log(`  note: this CPU cannot run ${kernel}; ${r.kernel} ran instead`);
    checkAll(r.kernel, r.errors, gemmCases());
  });
}

// Each bfloat16 kernel's run keeps its bits of one product, which the twin must reproduce exactly.
const bits: Record<string, string> = {};
for (const kernel of ['avx512bf16', 'generic']) {
  test(`bf16 gemm and attention, kernel forced to ${kernel}`, (ctx) => {
    const r = forced({ STEP_SEG_BF16_KERNEL: kernel });
    const name = kernel === 'generic' ? 'bf16-generic' : kernel;
    if (r.bf16Kernel !== name) return skip(ctx, `this CPU has no ${kernel} kernel (AVX512_BF16): bf16 runs ${r.bf16Kernel}`);
    checkAll(`${name} gemm`, r.bf16, gemmCases());
    checkAll(`${name} attention`, r.attention, attentionCases);
    bits[name] = r.bits;
  });
}

test('bf16: the portable twin gives the AVX512_BF16 kernel bit for bit', (ctx) => {
  if (!bits.avx512bf16 || !bits['bf16-generic']) return skip(ctx, 'needs both bf16 kernels to have run (AVX512_BF16)');
  assert.is(bits['bf16-generic'], bits.avx512bf16);
});

test('bf16 forced off: bf16 requests run float32', () => {
  const r = forced({ STEP_SEG_BF16_KERNEL: 'none' });
  assert.is(r.bf16Kernel, 'none');
  checkAll('none (float32)', r.bf16, gemmCases());
  checkAll('none (float32) attention', r.attention, attentionCases);
});

test('bf16 rounds: against float32 operands the error is that of bfloat16, not of float32', (ctx) => {
  if (info.bf16Kernel === 'none') return skip(ctx, 'no bf16 kernel on this CPU: bf16 runs float32');
  const big = gemmCases().filter((c) => c.M * c.N * c.K >= 1e5);
  assert.ok(big.length > 0);
  for (const c of big) {
    const i = gemmCases().indexOf(c);
    const err = runGemmCase(c, 100 + i, 'bf16', 'fp32');
    assert.ok(err > 3e-4 && err < 2e-2, `case ${JSON.stringify(c)}: relative L2 error against float32 operands ${err}`);
  }
  const err = runAttentionCase(attentionCases[1], 201, 'bf16', 'fp32');
  assert.ok(err > 3e-4 && err < 2e-2, `attention against float32 operands: ${err}`);
});

test('the chosen kernels are reported', () => {
  assert.match(info.gemmKernel, /^(avx512|avx2|generic)$/);
  assert.match(info.bf16Kernel, /^(avx512bf16|none)$/);
});

test.run();
