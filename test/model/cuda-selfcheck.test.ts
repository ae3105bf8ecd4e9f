// device 'auto' and the GPU self-check (lib/selfcheck.ts): 'auto' takes a usable GPU only after the
// tiny model's GPU logits have matched the CPU's in this process; when the check fails, 'auto' takes
// the CPU and says why ('cuda' asks for the GPU regardless). The failing case runs in a child process on
// the CUDA emulator with its memory capacity cut to 16 KiB, so the check's GPU model cannot be made.
// Skipped (counted) without CUDA; a failure under STEP_SEG_REQUIRE_CUDA=1.
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { cudaStatus, loadModel } from '../../lib/index';
import { compareSelfCheck } from '../../lib/selfcheck';
import { cudaRequired } from '../helpers/gpu';
import { skip, type TestCrumbs } from '../helpers/skip';

async function needCuda(ctx: TestCrumbs): Promise<boolean> {
  const s = await cudaStatus();
  if (s.usable) return true;
  if (cudaRequired) assert.unreachable(`STEP_SEG_REQUIRE_CUDA is set but CUDA cannot run: ${s.reason}`);
  skip(ctx, s.reason);
  return false;
}

test('the self-check passed here, and auto takes the GPU', async (ctx) => {
  if (!(await needCuda(ctx))) return;
  const s = await cudaStatus();
  assert.equal(s.selfCheck, { passed: true, reason: '' });
  const m = await loadModel(undefined, { device: 'auto' });
  try {
    assert.is(m.device, 'cuda');
  } finally {
    m.dispose();
  }
});

test('the comparison rejects logits off by more than the tolerance, and non-finite ones', () => {
  const cpu = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * 3);
  assert.is(compareSelfCheck(cpu, cpu.map((v) => v * (1 + 1e-3))), undefined);
  assert.match(compareSelfCheck(cpu, cpu.map((v) => v * 1.1)) ?? '', /differ from the CPU's by 1\.00e-1/);
  assert.match(compareSelfCheck(cpu, cpu.map((v, i) => (i === 5 ? NaN : v))) ?? '', /non-finite logit \(NaN\) at 5/);
  assert.match(compareSelfCheck(cpu, cpu.subarray(1)) ?? '', /63 logits where the CPU gave 64/);
});

test('a failed self-check: auto takes the CPU and says why', async (ctx) => {
  if (!(await needCuda(ctx))) return;
  if (!(loadBinding().binding as { emuOps?: unknown }).emuOps) return skip(ctx, 'needs the CUDA emulator (a GPU cannot be made to fail the check)');
  const script = `
    const { loadBinding } = require('./lib/binding');
    loadBinding().binding.emuOps.setMemoryCapacity(16 << 10);
    const { cudaStatus, loadModel } = require('./lib/index');
    (async () => {
      const s = await cudaStatus();
      const m = await loadModel(require('node:path').resolve('test/fixtures/stand-in'), { device: 'auto' });
      console.log(JSON.stringify({ selfCheck: s.selfCheck, device: m.device, reason: m.deviceReason }));
    })().catch((e) => { console.log(JSON.stringify({ error: e.message })); });`;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: path.resolve(__dirname, '../..'),
    env: { ...process.env, NODE_NO_WARNINGS: '1' },
    encoding: 'utf8',
  });
  const r = JSON.parse(out.trim().split('\n').pop()!);
  assert.is(r.error, undefined, r.error);
  assert.is(r.selfCheck.passed, false);
  assert.match(r.selfCheck.reason, /the GPU self-check failed: .*(memory|Memory)/);
  assert.is(r.device, 'cpu');
  assert.match(r.reason, /self-check failed/);
});

test.run();
