// token_halt, token_compact and token_scatter on the case table of scripts/cases/token_compact.ts:
// against plain references, with the compaction edge cases (none halted, all halted, one token left)
// and attention over a compacted list compared with attention computed densely over exactly the kept
// tokens; the CUDA kernels against the CPU ops: halt flags, cell labels, offsets and src_row exactly,
// the copies (token_compact, token_scatter) bit for bit, outputs poisoned first, real row counts at and
// below the bound read on the device. CUDA skips as test/ops/gemm.test.ts says.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { randn, rng } from '../../scripts/cases/random';
import { kTokenCompactCases, kTokenHaltAgreeCases, kTokenHaltCases, kTokenScatterCases } from '../../scripts/cases/token_compact';
import { activeRows, gridCase, kStepGridCases } from '../../scripts/cases/token_merge';
import { assertSameBits, offsetsOf, poisonF32, relL2 } from '../helpers/compare';
import { gpuTests } from '../helpers/gpu';
import { agreeRef } from '../helpers/step-cases';

const { ops } = loadBinding().binding;

function haltRef(logits: Float32Array, offsets: number[], K: number, prefix: number, threshold: number, topK: number, eligible?: boolean[]): Uint8Array {
  const halt = new Uint8Array(offsets[offsets.length - 1]);
  for (let b = 0; b + 1 < offsets.length; b++) {
    const cands: { cls: number; conf: number; row: number }[] = [];
    for (let r = offsets[b] + prefix; r < offsets[b + 1]; r++) {
      const l = Array.from(logits.subarray(r * K, r * K + K));
      const best = l.indexOf(Math.max(...l));
      const conf = 1 / l.reduce((a, v) => a + Math.exp(v - l[best]), 0);
      if (conf >= threshold && (!eligible || eligible[r])) cands.push({ cls: best, conf, row: r });
    }
    for (let c = 0; c < K; c++) {
      const mine = cands.filter((x) => x.cls === c).sort((x, y) => y.conf - x.conf || x.row - y.row);
      mine.slice(topK).forEach((x) => (halt[x.row] = 1));
    }
  }
  return halt;
}

function compact(x: Float32Array, C: number, offsets: number[], halt: Uint8Array) {
  const A = offsets[offsets.length - 1];
  const out = new Float32Array(A * C).fill(NaN), newOffsets = new Int32Array(offsets.length).fill(-1), srcRow = new Int32Array(A).fill(-1);
  ops.tokenCompact({ batch: offsets.length - 1, C, offsets: Int32Array.from(offsets), halt, x, out, newOffsets, srcRow });
  const kept = newOffsets[offsets.length - 1];
  return { out: out.subarray(0, kept * C), newOffsets: [...newOffsets], srcRow: srcRow.subarray(0, kept) };
}

test('token_halt: threshold, top-k context per class and image, prefix never halts', () => {
  const rand = rng(2);
  for (const [lengths, K, prefix, threshold, topK] of [
    [[40, 3, 77], 4, 1, 0.5, 2],
    [[30], 3, 0, 0, 0],
    [[25, 25], 5, 2, 0.0, 3],
    [[10], 2, 1, 1.01, 5],
  ] as [number[], number, number, number, number][]) {
    const offsets = [0];
    for (const n of lengths) offsets.push(offsets[offsets.length - 1] + n);
    const A = offsets[offsets.length - 1];
    const logits = randn(A * K, rand, 2);
    const halt = new Uint8Array(A).fill(9);
    ops.tokenHalt({ batch: lengths.length, K, prefix, offsets: Int32Array.from(offsets), logits, threshold, topK, halt });
    assert.equal([...halt], [...haltRef(logits, offsets, K, prefix, threshold, topK)]);
    for (let b = 0; b < lengths.length; b++) for (let r = 0; r < prefix; r++) assert.is(halt[offsets[b] + r], 0);
    if (threshold > 1) assert.ok(halt.every((h) => h === 0));
  }
});

test('token_halt with agreement: only rows whose bordering cells carry their label halt; cell labels painted', () => {
  const rand = rng(21);
  for (const [grids, sides] of kStepGridCases)
    for (const [prefix, threshold, topK] of [[1, 0.6, 1], [0, 0, 0], [1, 1.01, 2]]) {
      const c = gridCase(grids, sides, rand), K = 3, { offsets, rectOfRow } = activeRows(c, prefix, rand);
      const A = rectOfRow.length, logits = randn(A * K, rand, 1);
      // class 0 on the left half of each grid, class 1 on the right, with noise: boundaries to find
      const side = (b: number, col: number) => (col < c.gridW[b] / 2 ? 0 : 1);
      for (let r = 0; r < A; r++) if (rectOfRow[r] >= 0) logits[r * K + side(c.rects[4 * rectOfRow[r]], c.rects[4 * rectOfRow[r] + 2])] += 3;
      const cellLabel = new Int32Array(c.cells);
      c.grids.forEach(([gh, gw], b) => {
        for (let i = 0; i < gh * gw; i++) cellLabel[c.gridOffset[b] + i] = rand() < 0.1 ? 2 : side(b, i % gw);
      });
      const want = agreeRef(c, K, logits, rectOfRow, cellLabel);
      const halt = new Uint8Array(A).fill(9);
      ops.tokenHalt({
        batch: grids.length, K, prefix, offsets, logits, threshold, topK, halt,
        rectOfRow, rects: c.rects, gridOffset: c.gridOffset, gridH: c.gridH, gridW: c.gridW, cellLabel,
      });
      const what = `grids ${JSON.stringify(grids)}, threshold ${threshold}`;
      assert.equal([...cellLabel], [...want.labels], `${what}: cell labels`);
      assert.equal([...halt], [...haltRef(logits, [...offsets], K, prefix, threshold, topK, want.agrees)], `${what}: halt`);
      if (threshold === 0 && topK === 0) {  // the agreement decides alone: some rows halt, some do not
        assert.ok(halt.some((h) => h === 1) && want.agrees.some((a, r) => !a && rectOfRow[r] >= 0), `${what}: both kinds`);
      }
    }
});

test('token_compact: order kept, offsets rewritten; none halted, all halted, one token left', () => {
  const rand = rng(4);
  const C = 6;
  const offsets = [0, 5, 5, 12, 13];
  const A = 13;
  const x = randn(A * C, rand);
  const cases: [string, Uint8Array][] = [
    ['none halted', new Uint8Array(A)],
    ['all halted', new Uint8Array(A).fill(1)],
    ['one token left', Uint8Array.from({ length: A }, (_, i) => (i === 7 ? 0 : 1))],
    ['random', Uint8Array.from({ length: A }, () => (rand() < 0.5 ? 1 : 0))],
  ];
  for (const [name, halt] of cases) {
    const { out, newOffsets, srcRow } = compact(x, C, offsets, halt);
    const keptRows = [...Array(A).keys()].filter((r) => !halt[r]);
    assert.equal([...srcRow], keptRows, name);
    const expectOffsets = offsets.map((o) => keptRows.filter((r) => r < o).length);
    assert.equal(newOffsets, expectOffsets, name);
    keptRows.forEach((r, i) => assert.equal([...out.subarray(i * C, i * C + C)], [...x.subarray(r * C, r * C + C)], name));
  }
});

test('token_scatter files rows under their index, skipping -1 and masked rows', () => {
  const K = 3;
  const src = Float32Array.from({ length: 5 * K }, (_, i) => i + 1);
  const table = new Float32Array(4 * K).fill(NaN);
  ops.tokenScatter({ rows: 5, K, src, index: Int32Array.from([-1, 2, 0, 3, 1]), mask: Uint8Array.from([1, 1, 1, 0, 1]), table });
  assert.equal([...table.subarray(0, K)], [7, 8, 9]);
  assert.equal([...table.subarray(K, 2 * K)], [13, 14, 15]);
  assert.equal([...table.subarray(2 * K, 3 * K)], [4, 5, 6]);
  assert.ok(table.subarray(3 * K).every(Number.isNaN));
});

test('attention over a compacted list equals attention over exactly the kept tokens', () => {
  const rand = rng(8);
  const H = 2, D = 8, C = H * D;
  const offsets = [0, 20, 21, 60];
  const A = 60;
  const qkv = randn(A * 3 * C, rand, 1.5);
  const halt = Uint8Array.from({ length: A }, (_, i) => (i === 20 ? 0 : rand() < 0.6 ? 1 : 0));
  const { out: packed, newOffsets } = compact(qkv, 3 * C, offsets, halt);
  const kept = newOffsets[3];
  const got = new Float32Array(kept * C).fill(NaN);
  ops.attention({ batch: 3, offsets: Int32Array.from(newOffsets), heads: H, headDim: D, scale: 1 / Math.sqrt(D), qkv: packed, out: got });
  // reference: per image, attention among its kept rows of the original qkv only
  const ref = new Float64Array(kept * C);
  let row = 0;
  for (let b = 0; b < 3; b++) {
    const rows = [...Array(A).keys()].filter((r) => r >= offsets[b] && r < offsets[b + 1] && !halt[r]);
    for (const i of rows) {
      for (let h = 0; h < H; h++) {
        const s = rows.map((j) => {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qkv[i * 3 * C + h * D + d] * qkv[j * 3 * C + C + h * D + d];
          return dot / Math.sqrt(D);
        });
        const mx = Math.max(...s), e = s.map((v) => Math.exp(v - mx)), sum = e.reduce((a, v) => a + v, 0);
        for (let d = 0; d < D; d++) ref[row * C + h * D + d] = rows.reduce((a, j, n) => a + e[n] * qkv[j * 3 * C + 2 * C + h * D + d], 0) / sum;
      }
      row++;
    }
  }
  assert.ok(relL2(got, ref) < 1e-5);
});

// ---- CUDA against the CPU ops ---------------------------------------------------------------------------

const gpuTest = gpuTests(test);

gpuTest('token_halt: flags exactly the CPU (ties, top-k, prefix, none / all halting, uneven batches)', (gpu) => {
  const rand = rng(8300);
  for (const [lengths, K, prefix, threshold, topK] of kTokenHaltCases) {
    const offsets = offsetsOf(lengths), batch = lengths.length, A = offsets[batch];
    const logits = randn(A * K, rand, 3);
    // Equal confidences: copies of earlier rows (the tie goes to the lower row).
    for (let r = 3; r < A; r += 3) logits.copyWithin(r * K, (r - 2) * K, (r - 1) * K);
    const params = { batch, K, prefix, offsets, logits, threshold, topK };
    const want = new Uint8Array(A).fill(7), got = new Uint8Array(A).fill(7);
    ops.tokenHalt({ ...params, halt: want });
    gpu.tokenHalt({ ...params, halt: got });
    assertSameBits(got, want, `T = [${lengths}], K = ${K}, threshold ${threshold}, topK ${topK}`);
  }
});

gpuTest('token_halt with agreement: flags and cell labels exactly the CPU (prefix, none / all halting)', (gpu) => {
  const rand = rng(9200);
  for (const [grids, sides] of kStepGridCases)
    for (const [prefix, threshold, topK] of kTokenHaltAgreeCases) {
      const c = gridCase(grids, sides, rand), K = 4, { offsets, rectOfRow } = activeRows(c, prefix, rand);
      const A = rectOfRow.length, logits = randn(A * K, rand, 2);
      for (let r = 0; r < A; r++) if (rectOfRow[r] >= 0 && rand() < 0.8) logits[r * K] += 4; // mostly class 0: rows agree
      const labels = Int32Array.from({ length: c.cells }, () => (rand() < 0.85 ? 0 : Math.floor(rand() * K)));
      const params = { batch: grids.length, K, prefix, offsets, logits, threshold, topK, rectOfRow, rects: c.rects, gridOffset: c.gridOffset, gridH: c.gridH, gridW: c.gridW };
      const want = { halt: new Uint8Array(A).fill(7), cellLabel: Int32Array.from(labels) };
      const got = { halt: new Uint8Array(A).fill(7), cellLabel: Int32Array.from(labels) };
      ops.tokenHalt({ ...params, ...want });
      gpu.tokenHalt({ ...params, ...got });
      const what = `grids ${JSON.stringify(grids)}, threshold ${threshold}, topK ${topK}`;
      assertSameBits(got.cellLabel, want.cellLabel, `${what}: cell labels`);
      assertSameBits(got.halt, want.halt, `${what}: halt`);
    }
});

gpuTest('token_compact: out, new offsets and src_row exactly the CPU (none / all halted, one left, rows bound above A)', (gpu) => {
  const rand = rng(8400);
  for (const [lengths, C, pattern] of kTokenCompactCases) {
    const offsets = offsetsOf(lengths), batch = lengths.length, A = offsets[batch];
    const halt = Uint8Array.from({ length: A }, () => (pattern === 'all' ? 1 : pattern === 'none' ? 0 : rand() < 0.6 ? 1 : 0));
    if (pattern === 'one') halt.fill(1), (halt[A - 7] = 0);
    const x = randn(A * C, rand);
    for (const rowsBound of [A, A + 3]) {
      const what = `T = [${lengths}], C = ${C}, ${pattern}, rowsBound ${rowsBound}`;
      const run = (fn: (p: Record<string, unknown>) => void) => {
        const out = poisonF32(A * C), newOffsets = new Int32Array(batch + 1).fill(-3), srcRow = new Int32Array(A).fill(-5);
        fn({ batch, C, offsets, halt, x, out, newOffsets, srcRow, rowsBound });
        return { out, newOffsets, srcRow };
      };
      const want = run((p) => ops.tokenCompact(p));
      const got = run((p) => gpu.tokenCompact(p as never));
      assertSameBits(got.newOffsets, want.newOffsets, `${what}: new offsets`);
      assertSameBits(got.srcRow, want.srcRow, `${what}: src_row`);
      assertSameBits(got.out, want.out, `${what}: out`);
    }
  }
});

gpuTest('token_scatter: bit-identical to the CPU (prefix rows -1, mask, K = 1 and 19), rows on the device', (gpu) => {
  const rand = rng(8500);
  for (const [rows, K, tableRows, withMask] of kTokenScatterCases) {
    const order = Array.from({ length: tableRows }, (_, i) => i).sort(() => rand() - 0.5);
    const index = Int32Array.from({ length: rows }, (_, r) => (r % 11 === 0 ? -1 : order[r % tableRows]));
    const mask = withMask ? Uint8Array.from({ length: rows }, () => (rand() < 0.7 ? 1 : 0)) : undefined;
    const src = randn(rows * K, rand);
    for (const rowsDevice of [undefined, Math.max(0, rows - 3)]) {
      const real = rowsDevice ?? rows;
      const want = poisonF32(tableRows * K), got = poisonF32(tableRows * K);
      ops.tokenScatter({ rows: real, K, src, index, mask, table: want });
      gpu.tokenScatter({ rows, K, src, index, mask, table: got, rowsDevice });
      assertSameBits(got, want, `rows ${rows}, K = ${K}, mask ${withMask}, rowsDevice ${rowsDevice}`);
    }
  }
});

test.run();
