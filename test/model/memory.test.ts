// Memory: every call reserves what each stage will allocate (the copy, decoding, the forward, the
// results) before it allocates, against one process-wide budget for all calls in flight; and an
// allocation that fails anyway (the budget lied to, a small address space) is an OutOfMemoryError
// wherever it happens: never an abort. Scenarios that measure or limit the process run in children.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { OutOfMemoryError, loadModel } from '../../lib/index';
import { standIn } from '../helpers/compare';

const child = path.join(__dirname, '..', 'helpers', 'memory-child.ts');
function run(scenario: string, env: Record<string, string> = {}, node: string[] = [], shell = ''): Record<string, unknown> {
  const cmd = `${shell} exec "${process.execPath}" ${node.join(' ')} --import tsx "${child}" ${scenario}`;
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  assert.is(r.signal, null, `${scenario}: killed by ${r.signal}: ${r.stderr.slice(-400)}`);
  assert.is(r.status, 0, `${scenario}: exit ${r.status}: ${r.stderr.slice(-400)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}
const MiB = 2 ** 20;

test('what a call reserves covers what it really takes (peak RSS), with probabilities', () => {
  const r = run('peak') as { peak: number; reserved: number; after: number };
  console.log(`  3000 x 2500 at 1536 with probabilities: peak RSS +${Math.round(r.peak / MiB)} MiB, reserved ${Math.round(r.reserved / MiB)} MiB`);
  assert.ok(r.peak <= r.reserved, `the call took ${Math.round(r.peak / MiB)} MiB but reserved only ${Math.round(r.reserved / MiB)} MiB`);
  assert.ok(r.reserved <= 3 * r.peak + 64 * MiB, `reserved ${Math.round(r.reserved / MiB)} MiB for a peak of ${Math.round(r.peak / MiB)} MiB`);
  assert.is(r.after, 0, 'reservations outlived the call');
});

test('calls in flight count together: over the budget some are refused, the rest run, nothing leaks', async () => {
  const a = await loadModel(standIn, { device: 'cpu' }), b = await loadModel(standIn, { device: 'cpu' });
  const data = new Uint8Array(1200 * 900 * 3).fill(90);
  const image = { data, width: 1200, height: 900, channels: 3 as const };
  const opts = { size: 1024, probabilities: true };
  // what one call reserves
  let one = 0;
  const timer = setInterval(() => (one = Math.max(one, loadBinding().binding.memoryReserved())), 0);
  await a.segment(image, opts);
  clearInterval(timer);
  assert.ok(one > 50 * MiB, `${one}`);
  process.env.STEP_SEG_MEMORY_LIMIT_MB = String(Math.ceil((2.5 * one) / MiB));
  try {
    const calls = [a, b, a, b, a, b].map((m) => m.segment(image, opts));
    const settled = await Promise.allSettled(calls);
    const ok = settled.filter((s) => s.status === 'fulfilled').length;
    const refused = settled.filter((s) => s.status === 'rejected');
    for (const s of refused) assert.instance((s as PromiseRejectedResult).reason, OutOfMemoryError);
    assert.ok(ok >= 1 && refused.length >= 1, `${ok} ran, ${refused.length} refused`);
    assert.match(String((refused[0] as PromiseRejectedResult).reason), /held by other calls in flight/);
    assert.is(loadBinding().binding.memoryReserved(), 0);
    await a.segment(image, opts); // the budget is whole again
  } finally {
    delete process.env.STEP_SEG_MEMORY_LIMIT_MB;
    a.dispose(), b.dispose();
  }
});

test('allocations that fail for real (a 4.5 GB address space, the budget lied to) are OutOfMemoryError', () => {
  const r = run('address-space', { STEP_SEG_MEMORY_LIMIT_MB: '10000000' }, ['--no-expose-wasm'], 'ulimit -v 4500000 &&') as {
    outcomes: string[];
    after: number;
    reserved: number;
  };
  console.log(`  ${r.outcomes.join('; ')}`);
  for (const o of r.outcomes) assert.match(o, /: (ok|oom)/);
  assert.ok(r.outcomes.filter((o) => /: oom/.test(o)).length >= 2, r.outcomes.join('; '));
  assert.is(r.after, 64 * 48);
  assert.is(r.reserved, 0);
});

test('a label map no typed array can hold is an OutOfMemoryError; a 24 MB V8 heap is no obstacle', () => {
  const huge = run('huge-output', { STEP_SEG_MEMORY_LIMIT_MB: '10000000' });
  assert.is(huge.outcome, 'oom', String(huge.message));
  const refused = run('huge-output');
  assert.is(refused.outcome, 'oom', String(refused.message)); // the budget refuses it before any allocation
  assert.match(String(refused.message), /needs about \d+ MiB .*the results/);
  const heap = run('heap', {}, ['--max-old-space-size=24']);
  assert.is(heap.outcome, 'ok', String(heap.message));
});

test.run();
