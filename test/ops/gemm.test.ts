// gemm: every SIMD kernel (forced through STEP_SEG_GEMM_KERNEL, each in its own process since the
// kernel is chosen once) against a double-precision reference, on the shared case table.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { gemmCases, runGemmCase } from '../helpers/op-cases';

test('gemm, the kernel this machine picks: all cases within 1e-5', () => {
  gemmCases().forEach((c, i) => {
    const err = runGemmCase(c, 100 + i);
    assert.ok(err < 1e-5, `case ${JSON.stringify(c)}: relative L2 error ${err}`);
  });
});

for (const kernel of ['generic', 'avx2', 'avx512']) {
  test(`gemm, kernel forced to ${kernel}`, () => {
    const script = path.join(__dirname, '..', 'helpers', 'op-cases.ts');
    const out = execFileSync(process.execPath, ['--import', 'tsx', script], {
      env: { ...process.env, STEP_SEG_GEMM_KERNEL: kernel },
      encoding: 'utf8',
    });
    const { kernel: ran, errors } = JSON.parse(out.trim().split('\n').pop()!) as { kernel: string; errors: number[] };
    if (ran !== kernel) console.log(`  note: this CPU cannot run ${kernel}; ${ran} ran instead`);
    const cases = gemmCases();
    errors.forEach((err, i) => assert.ok(err < 1e-5, `${ran}, case ${JSON.stringify(cases[i])}: relative L2 error ${err}`));
    assert.is(errors.length, cases.length);
  });
}

test('the chosen kernel is reported', () => {
  assert.match(loadBinding().binding.cpuInfo().gemmKernel, /^(avx512|avx2|generic)$/);
});

test.run();
