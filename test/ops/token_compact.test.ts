// token_halt, token_compact and token_scatter on the case table of scripts/cases/token_compact.ts:
// against plain references, with the compaction edge cases (none halted, all halted, one token left)
// and attention over a compacted list compared with attention computed densely over exactly the kept
// tokens; the CUDA kernels against the CPU ops: halt flags, cell labels, offsets and src_row exactly,
// the copies (token_compact, token_scatter) bit for bit, outputs poisoned first, real row counts at and
// below the bound read on the device. The bookkeeping ops (token_rows_init, token_exit_mark,
// token_gather, token_pack) the same way: the CPU against JS references, CUDA against the CPU, every
// output element compared and the elements past what the op writes left as poisoned.
// CUDA skips as test/ops/gemm.test.ts says.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { randn, rng } from '../../scripts/cases/random';
import {
  kTokenCompactCases, kTokenExitMarkCases, kTokenGatherCases, kTokenHaltAgreeCases, kTokenHaltCases, kTokenPackCases,
  kTokenRowsInitCases, kTokenScatterCases,
} from '../../scripts/cases/token_compact';
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

// ---- the bookkeeping ops: inputs of each case, and their JS references --------------------------------

const kPoison = -7; // int32 poison: no op writes it
const poisonI32 = (n: number): Int32Array => new Int32Array(n).fill(kPoison);
const withPoison = (a: ArrayLike<number>, extra: number): number[] => [...Array.from(a), ...Array(extra).fill(kPoison)];

/** rect_of_row and rect_exit of a fresh packed list, counting rects in image order. */
function rowsInitRef(lengths: number[], prefix: number, depth: number) {
  const rectOfRow: number[] = [], rectExit: number[] = [];
  for (const n of lengths)
    for (let j = 0; j < n; j++) {
      rectOfRow.push(j < prefix ? -1 : rectExit.length);
      if (j >= prefix) rectExit.push(depth);
    }
  return { rectOfRow, rectExit };
}

/** Rows carrying distinct rects (every seventh row a prefix row), halt flags, earlier exits in rectExit. */
function exitMarkCase(rows: number, rects: number, pattern: string, rand: () => number) {
  const order = Array.from({ length: rects }, (_, i) => i).sort(() => rand() - 0.5);
  const rectOfRow = Int32Array.from({ length: rows }, (_, r) => (r % 7 === 3 ? -1 : order[r]));
  const halt = Uint8Array.from({ length: rows }, () => (pattern === 'all' ? 1 : pattern === 'none' ? 0 : rand() < 0.5 ? 1 : 0));
  if (pattern === 'one') halt.fill(0), (halt[rows - 1] = 1);
  const rectExit = Int32Array.from({ length: rects }, () => (rand() < 0.3 ? 4 : 12));
  return { rectOfRow, halt, rectExit };
}
function exitMarkRef(rows: number, layer: number, halt: Uint8Array, rectOfRow: Int32Array, rectExit: Int32Array): number[] {
  const out = [...rectExit];
  for (let r = 0; r < rows; r++) if (halt[r] && rectOfRow[r] >= 0) out[rectOfRow[r]] = layer;
  return out;
}

/** An increasing src_row (as token_compact writes it) over `inRows` rows of random int32. */
function gatherCase(rows: number, inRows: number, rand: () => number) {
  const picked = Array.from({ length: inRows }, (_, i) => i).sort(() => rand() - 0.5).slice(0, rows).sort((a, b) => a - b);
  const input = Int32Array.from({ length: inRows }, () => Math.floor(rand() * 2 ** 31) - 2 ** 30);
  return { srcRow: Int32Array.from(picked), input };
}

/** Each image's selected rects at its grid offset of stage, a few unselected cells after them. */
function packCase(counts: number[], rand: () => number) {
  const gridOffset = new Int32Array(counts.length);
  let cells = 0;
  counts.forEach((n, b) => ((gridOffset[b] = cells), (cells += n + Math.floor(rand() * 5))));
  const stage = Int32Array.from({ length: 4 * cells }, () => Math.floor(rand() * 1000));
  return { counts: Int32Array.from(counts), gridOffset, stage, total: counts.reduce((a, n) => a + n, 0) };
}
function packRef(counts: number[], prefix: number, gridOffset: Int32Array, stage: Int32Array) {
  const rects: number[] = [], offsets = [0];
  counts.forEach((n, b) => {
    rects.push(...stage.subarray(4 * gridOffset[b], 4 * (gridOffset[b] + n)));
    offsets.push(offsets[b] + prefix + n);
  });
  return { rects, offsets, rectCount: rects.length / 4 };
}

test('token_rows_init: the rect of every row and every rect at depth, from the offsets alone', () => {
  for (const [lengths, prefix, depth] of kTokenRowsInitCases) {
    const offsets = offsetsOf(lengths), batch = lengths.length, A = offsets[batch], rects = A - batch * prefix;
    const rectOfRow = poisonI32(A + 3), rectExit = poisonI32(rects + 3);
    ops.tokenRowsInit({ batch, prefix, depth, offsets, rectOfRow, rectExit });
    const want = rowsInitRef(lengths, prefix, depth), what = `T = [${lengths}], prefix ${prefix}`;
    assert.equal([...rectOfRow], withPoison(want.rectOfRow, 3), `${what}: rect_of_row`);
    assert.equal([...rectExit], withPoison(want.rectExit, 3), `${what}: rect_exit`);
  }
});

test('token_exit_mark: halted rows that carry a rect mark it, every other rect keeps its exit', () => {
  const rand = rng(31);
  for (const [rows, rects, pattern, below] of kTokenExitMarkCases) {
    const c = exitMarkCase(rows, rects, pattern, rand), real = rows - below, rectExit = Int32Array.from(c.rectExit);
    ops.tokenExitMark({ rows: real, layer: 8, halt: c.halt, rectOfRow: c.rectOfRow, rectExit });
    assert.equal([...rectExit], exitMarkRef(real, 8, c.halt, c.rectOfRow, c.rectExit), `rows ${real}, ${pattern}`);
    if (pattern === 'none') assert.equal([...rectExit], [...c.rectExit]);
  }
});

test('token_gather: out[r] = in[src_row[r]] for the rows asked, nothing past them', () => {
  const rand = rng(32);
  for (const [rows, inRows, below] of kTokenGatherCases) {
    const { srcRow, input } = gatherCase(rows, inRows, rand), real = rows - below, out = poisonI32(rows + 2);
    ops.tokenGather({ rows: real, srcRow, in: input, out });
    assert.equal([...out], withPoison([...srcRow.subarray(0, real)].map((r) => input[r]), below + 2), `rows ${real} of ${inRows}`);
  }
});

test('token_pack: rects back to back in image order, offsets with the prefix rows, the rect count', () => {
  const rand = rng(33);
  for (const [counts, prefix] of kTokenPackCases) {
    const c = packCase(counts, rand);
    const rects = poisonI32(4 * (c.total + 2)), offsets = poisonI32(counts.length + 1), rectCount = poisonI32(1);
    ops.tokenPack({ batch: counts.length, prefix, counts: c.counts, gridOffset: c.gridOffset, stage: c.stage, rects, offsets, rectCount });
    const want = packRef(counts, prefix, c.gridOffset, c.stage), what = `counts [${counts}], prefix ${prefix}`;
    assert.equal([...rects], withPoison(want.rects, 8), `${what}: rects`);
    assert.equal([...offsets], want.offsets, `${what}: offsets`);
    assert.equal(rectCount[0], want.rectCount, `${what}: rect count`);
  }
});

test('the bookkeeping ops follow a forward: init, halt, mark, compact, gather keep each row on its rect', () => {
  const rand = rng(34);
  const lengths = [1, 30, 0 + 1, 300], prefix = 1, depth = 12, batch = lengths.length;
  let offsets = offsetsOf(lengths), A = offsets[batch];
  const rects = A - batch * prefix, rectExit = poisonI32(rects);
  let rectOfRow = poisonI32(A);
  ops.tokenRowsInit({ batch, prefix, depth, offsets, rectOfRow, rectExit });
  const x = Float32Array.from(rectOfRow); // one channel: the row's rect, to follow through the compaction
  const exitOf = new Array(rects).fill(depth);
  for (const layer of [4, 8]) {
    const halt = Uint8Array.from({ length: A }, (_, r) => (rectOfRow[r] >= 0 && rand() < 0.4 ? 1 : 0));
    ops.tokenExitMark({ rows: A, layer, halt, rectOfRow, rectExit });
    for (let r = 0; r < A; r++) if (halt[r]) exitOf[rectOfRow[r]] = layer;
    const { out, newOffsets, srcRow } = compact(x.subarray(0, A), 1, [...offsets], halt);
    const gathered = poisonI32(newOffsets[batch]);
    ops.tokenGather({ rows: newOffsets[batch], srcRow, in: rectOfRow, out: gathered });
    assert.equal([...gathered], [...out], `layer ${layer}: the gathered rects are the compacted rows'`);
    x.set(out), (rectOfRow = gathered), (offsets = Int32Array.from(newOffsets)), (A = newOffsets[batch]);
  }
  assert.equal([...rectExit], exitOf);
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

gpuTest('token_rows_init: rect_of_row and rect_exit exactly the CPU (empty images, prefix-only images, bound above A)', (gpu) => {
  for (const [lengths, prefix, depth, extra] of kTokenRowsInitCases) {
    const offsets = offsetsOf(lengths), batch = lengths.length, A = offsets[batch], rects = A - batch * prefix;
    const run = (fn: (p: Record<string, unknown>) => void) => {
      const rectOfRow = poisonI32(A + extra + 2), rectExit = poisonI32(rects + extra + 2);
      fn({ batch, prefix, depth, offsets, rectOfRow, rectExit });
      return { rectOfRow, rectExit };
    };
    const want = run((p) => ops.tokenRowsInit(p)), got = run((p) => gpu.tokenRowsInit({ ...p, rowsBound: A + extra } as never));
    const what = `T = [${lengths}], prefix ${prefix}, rowsBound A + ${extra}`;
    assertSameBits(got.rectOfRow, want.rectOfRow, `${what}: rect_of_row`);
    assertSameBits(got.rectExit, want.rectExit, `${what}: rect_exit`);
    assert.ok(got.rectOfRow.subarray(A).every((v) => v === kPoison) && got.rectExit.subarray(rects).every((v) => v === kPoison),
      `${what}: written past the list`);
  }
});

gpuTest('token_exit_mark: rect_exit exactly the CPU (none / all / one halted, real rows below the bound on the device)', (gpu) => {
  const rand = rng(8600);
  for (const [rows, rects, pattern, below] of kTokenExitMarkCases) {
    const c = exitMarkCase(rows, rects, pattern, rand), real = rows - below;
    for (const rowsDevice of below ? [real] : [undefined, rows]) {
      const want = Int32Array.from(c.rectExit), got = Int32Array.from(c.rectExit);
      ops.tokenExitMark({ rows: real, layer: 8, halt: c.halt, rectOfRow: c.rectOfRow, rectExit: want });
      gpu.tokenExitMark({ rows, layer: 8, halt: c.halt, rectOfRow: c.rectOfRow, rectExit: got, rowsDevice });
      assertSameBits(got, want, `rows ${rows}, ${pattern}, rowsDevice ${rowsDevice}`);
    }
  }
});

gpuTest('token_gather: out exactly the CPU, nothing written past the real rows read on the device', (gpu) => {
  const rand = rng(8700);
  for (const [rows, inRows, below] of kTokenGatherCases) {
    const { srcRow, input } = gatherCase(rows, inRows, rand), real = rows - below;
    for (const rowsDevice of below ? [real] : [undefined, rows]) {
      const want = poisonI32(rows + 2), got = poisonI32(rows + 2);
      ops.tokenGather({ rows: real, srcRow, in: input, out: want });
      gpu.tokenGather({ rows, srcRow, in: input, out: got, rowsDevice });
      const what = `rows ${rows} of ${inRows}, rowsDevice ${rowsDevice}`;
      assertSameBits(got, want, what);
      assert.ok(got.subarray(real).every((v) => v === kPoison), `${what}: written past the real rows`);
    }
  }
});

gpuTest('token_pack: rects, offsets and the rect count exactly the CPU (one image, empty images, off the block)', (gpu) => {
  const rand = rng(8800);
  for (const [counts, prefix] of kTokenPackCases) {
    const c = packCase(counts, rand), batch = counts.length;
    const run = (fn: (p: Record<string, unknown>) => void) => {
      const rects = poisonI32(4 * (c.total + 2)), offsets = poisonI32(batch + 1), rectCount = poisonI32(1);
      fn({ batch, prefix, counts: c.counts, gridOffset: c.gridOffset, stage: c.stage, rects, offsets, rectCount });
      return { rects, offsets, rectCount };
    };
    const want = run((p) => ops.tokenPack(p)), got = run((p) => gpu.tokenPack(p as never));
    const what = `counts [${counts}], prefix ${prefix}`;
    assertSameBits(got.rects, want.rects, `${what}: rects`);
    assertSameBits(got.offsets, want.offsets, `${what}: offsets`);
    assertSameBits(got.rectCount, want.rectCount, `${what}: rect count`);
    assert.ok(got.rects.subarray(4 * c.total).every((v) => v === kPoison), `${what}: written past the rects`);
  }
});

test.run();
