// The CUDA twins of issue 17's STEP changes against the CPU ops, on the case table of
// test/helpers/step-cases.ts: unshare in blend mode (bit for bit: the box weights times the logits are
// exact, ops.h) and token_halt with agreement (flags and cell labels exactly). Outputs poisoned first;
// real token counts at and below the bound, read on the device. Skips as test/ops/cuda.test.ts does.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { gpuTests } from '../helpers/gpu';
import { randn, rng } from '../helpers/random';
import { activeRows, gridCase, kStepGridCases } from '../helpers/step-cases';

const cpu = loadBinding().binding.ops;
const gpuTest = gpuTests(test);

/** Every element equal, floats bit for bit. */
function assertSameBits(got: Float32Array | Int32Array | Uint8Array, want: typeof got, what: string): void {
  const view = (a: typeof got) => (a instanceof Float32Array ? new Uint32Array(a.buffer, a.byteOffset, a.length) : a);
  const g = view(got), w = view(want);
  assert.is(g.length, w.length, `${what}: lengths`);
  for (let i = 0; i < g.length; i++)
    if (g[i] !== w[i]) assert.unreachable(`${what}: first difference at element ${i}: got ${got[i]}, want ${want[i]}`);
}

gpuTest('unshare blend: bit-identical to the CPU (random tilings, odd side, no superpatches), tokens on the device', (ops) => {
  const rand = rng(9100);
  for (const [grids, sides] of kStepGridCases)
    for (const K of [1, 11]) {
      const c = gridCase(grids, sides, rand), logits = randn(c.tokens * K, rand, 3);
      const params = { K, rects: c.rects, logits, gridOffset: c.gridOffset, gridW: c.gridW, gridH: c.gridH, mode: 'blend' as const };
      // the workspace starts the same on both: below a real count under the bound, cells of later
      // tokens are read from it without being copied (and stay poisoned in the grid)
      const start = randn(c.cells * K, rand);
      for (const tokensDevice of [undefined, 0, Math.floor(c.tokens / 2), c.tokens + 4]) {
        const real = tokensDevice === undefined ? c.tokens : Math.min(tokensDevice, c.tokens);
        const want = new Float32Array(c.cells * K).fill(NaN), got = new Float32Array(c.cells * K).fill(NaN);
        cpu.unshare({ ...params, tokens: real, grid: want, flat: Float32Array.from(start) });
        ops.unshare({ ...params, tokens: c.tokens, tokensDevice, grid: got, flat: Float32Array.from(start) });
        assertSameBits(got, want, `grids ${JSON.stringify(grids)}, K = ${K}, tokensDevice ${tokensDevice}`);
      }
    }
});

gpuTest('token_halt with agreement: flags and cell labels exactly the CPU (prefix, none / all halting)', (ops) => {
  const rand = rng(9200);
  for (const [grids, sides] of kStepGridCases)
    for (const [prefix, threshold, topK] of [[1, 0.6, 1], [0, 0, 0], [1, 1.01, 2], [2, 0.9, 5]]) {
      const c = gridCase(grids, sides, rand), K = 4, { offsets, rectOfRow } = activeRows(c, prefix, rand);
      const A = rectOfRow.length, logits = randn(A * K, rand, 2);
      for (let r = 0; r < A; r++) if (rectOfRow[r] >= 0 && rand() < 0.8) logits[r * K] += 4; // mostly class 0: rows agree
      const labels = Int32Array.from({ length: c.cells }, () => (rand() < 0.85 ? 0 : Math.floor(rand() * K)));
      const params = { batch: grids.length, K, prefix, offsets, logits, threshold, topK, rectOfRow, rects: c.rects, gridOffset: c.gridOffset, gridH: c.gridH, gridW: c.gridW };
      const want = { halt: new Uint8Array(A).fill(7), cellLabel: Int32Array.from(labels) };
      const got = { halt: new Uint8Array(A).fill(7), cellLabel: Int32Array.from(labels) };
      cpu.tokenHalt({ ...params, ...want });
      ops.tokenHalt({ ...params, ...got });
      const what = `grids ${JSON.stringify(grids)}, threshold ${threshold}, topK ${topK}`;
      assertSameBits(got.cellLabel, want.cellLabel, `${what}: cell labels`);
      assertSameBits(got.halt, want.halt, `${what}: halt`);
    }
});

test.run();
