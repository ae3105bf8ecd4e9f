// The checked readers of the op parameter structs (native/addon/op_params.cpp) on the CPU ops: a
// typed array too short for what the op reads or writes is a RangeError naming the option, the wrong
// dtype a TypeError, an index past its table a RangeError, all thrown before the op touches memory.
// And `ops` has one entry per op of native/core/backend.h (the op table, native/addon/op_table.h).
import * as fs from 'node:fs';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { repoRoot } from '../helpers/compare';

const { ops } = loadBinding().binding;

/** Asserts that `run` throws an instance of `type` whose message matches `message`. */
function throwsLike(run: () => void, type: ErrorConstructor, message: RegExp) {
  try {
    run();
  } catch (e) {
    assert.instance(e, type, String(e));
    assert.match((e as Error).message, message);
    return;
  }
  assert.unreachable(`expected a ${type.name} matching ${message}`);
}

test('gemm: a too short, w of the wrong dtype, c too short', () => {
  const M = 4, N = 3, K = 5;
  const base = { M, N, K, a: new Float32Array(M * K), w: new Float32Array(N * K), epilogue: 'none', c: new Float32Array(M * N).fill(7) };
  ops.gemm(base);
  assert.ok(base.c.every((v) => v === 0), 'the full-size call runs');
  const c = new Float32Array(M * N).fill(7);
  throwsLike(() => ops.gemm({ ...base, a: new Float32Array(M * K - 1), c }), RangeError,
    /^ops\.gemm: expected a Float32Array of at least 20 elements for a but received Float32Array of length 19$/);
  assert.ok(c.every((v) => v === 7), 'a refused call writes nothing');
  throwsLike(() => ops.gemm({ ...base, w: new Uint16Array(N * K) }), TypeError, /for w but received Uint16Array/);
  throwsLike(() => ops.gemm({ ...base, c: new Float32Array(M * N - 1) }), RangeError, /for c but received Float32Array of length 11/);
  throwsLike(() => ops.gemm({ ...base, lda: 20, a: new Float32Array(M * K) }), RangeError, /for a /); // (M - 1) * lda + K
});

test('layernorm, tokenCompact, upsample, posResample: a short array names its option', () => {
  const rows = 3, C = 8;
  const ln = { rows, C, eps: 1e-6, x: new Float32Array(rows * C), gamma: new Float32Array(C), beta: new Float32Array(C), y: new Float32Array(rows * C) };
  throwsLike(() => ops.layernorm({ ...ln, gamma: new Float32Array(C - 1) }), RangeError, /^ops\.layernorm: .* for gamma /);
  throwsLike(() => ops.layernorm({ ...ln, x: new Float32Array(rows * C - 1) }), RangeError, /for x /);

  const offsets = Int32Array.from([0, 2, 5]), halt = Uint8Array.from([0, 1, 0, 0, 1]);
  const compact = { batch: 2, C, offsets, halt, x: new Float32Array(5 * C), out: new Float32Array(3 * C), newOffsets: new Int32Array(3), srcRow: new Int32Array(3) };
  ops.tokenCompact(compact);
  assert.equal([...compact.newOffsets], [0, 1, 3]);
  throwsLike(() => ops.tokenCompact({ ...compact, x: new Float32Array(5 * C - 1) }), RangeError, /^ops\.tokenCompact: .* for x /);
  throwsLike(() => ops.tokenCompact({ ...compact, halt: new Uint8Array(4) }), RangeError, /for halt /);
  throwsLike(() => ops.tokenCompact({ ...compact, offsets: Int32Array.from([0, 3, 2]) }), RangeError, /offsets must not decrease/);

  const K = 2, gh = 2, gw = 2;
  const up = { K, gh, gw, patch: 16, logits: new Float32Array(gh * gw * K), validH: 32, validW: 32, outH: 8, outW: 8, labels: new Int32Array(64) };
  ops.upsample(up);
  throwsLike(() => ops.upsample({ ...up, labels: new Int32Array(63) }), RangeError, /^ops\.upsample: .* for labels /);
  throwsLike(() => ops.upsample({ ...up, probs: new Float32Array(64 * K - 1) }), RangeError, /for probs /);

  throwsLike(() => ops.posResample({ C: 4, srcH: 2, srcW: 2, src: new Float32Array(16), dstH: 3, dstW: 3, dst: new Float32Array(35) }),
    RangeError, /^ops\.posResample: .* for dst /);
});

test('an index past its table and a missing setting are refused with the option named', () => {
  throwsLike(() => ops.tokenScatter({ rows: 2, K: 1, src: new Float32Array(2), index: Int32Array.from([0, 3]), table: new Float32Array(3) }),
    RangeError, /^ops\.tokenScatter: index\[1\] = 3 is not a row of table \(3 rows\)$/);
  const rects = Int32Array.from([0, 0, 0, 1, 0, 0, 5, 1]); // the second rect is past the 4-column grid
  throwsLike(() => ops.unshare({ K: 1, tokens: 2, rects, logits: new Float32Array(2), gridOffset: Int32Array.from([0]), gridW: Int32Array.from([4]), grid: new Float32Array(8), mode: 'copy' }),
    RangeError, /rect 1 does not fit its image's grid/);
  throwsLike(() => ops.unshare({ K: 1, tokens: 0, rects: new Int32Array(0), logits: new Float32Array(0), gridOffset: Int32Array.from([0]), gridW: Int32Array.from([4]), grid: new Float32Array(8) }),
    TypeError, /for mode but received undefined/);
  throwsLike(() => ops.gemm({ M: 1, N: 1, K: 1, a: new Float32Array(1), w: new Float32Array(1), c: new Float32Array(1), precision: 'fp16' }),
    TypeError, /for precision but received string 'fp16'/);
});

test('the bookkeeping ops: indices past their arrays, images short of their prefix, rects past stage are refused', () => {
  const i32 = (...v: number[]) => Int32Array.from(v);
  throwsLike(() => ops.tokenGather({ rows: 2, srcRow: i32(0, 3), in: new Int32Array(3), out: new Int32Array(2) }),
    RangeError, /^ops\.tokenGather: srcRow\[1\] = 3 is not a row of in \(3 rows\)$/);
  throwsLike(() => ops.tokenExitMark({ rows: 1, layer: 4, halt: new Uint8Array(1), rectOfRow: i32(-2), rectExit: new Int32Array(2) }),
    RangeError, /^ops\.tokenExitMark: rectOfRow\[0\] = -2 is not a rect of rectExit or -1 \(2 rects\)$/);
  throwsLike(() => ops.tokenRowsInit({ batch: 2, prefix: 1, depth: 12, offsets: i32(0, 3, 3), rectOfRow: new Int32Array(3), rectExit: new Int32Array(2) }),
    RangeError, /every image needs at least `prefix` rows/);
  throwsLike(() => ops.tokenRowsInit({ batch: 1, prefix: 1, depth: 12, offsets: i32(0, 3), rectOfRow: new Int32Array(3), rectExit: new Int32Array(1) }),
    RangeError, /for rectExit /);
  const pack = { batch: 1, prefix: 1, counts: i32(3), gridOffset: i32(0), stage: new Int32Array(8), rects: new Int32Array(12), offsets: new Int32Array(2), rectCount: new Int32Array(1) };
  throwsLike(() => ops.tokenPack(pack), RangeError, /^ops\.tokenPack: image 0's rects \(gridOffset, counts\) lie outside stage \(2 rects\)$/);
  throwsLike(() => ops.tokenPack({ ...pack, counts: i32(2), rects: new Int32Array(7) }), RangeError, /for rects /);
});

test('ops has one entry per op of native/core/backend.h', () => {
  const header = fs.readFileSync(path.join(repoRoot, 'native', 'core', 'backend.h'), 'utf8');
  const methods = [...header.matchAll(/virtual void (\w+)\(const \w+Params& p\) = 0;/g)].map((m) => m[1]);
  assert.ok(methods.length >= 16, `${methods.length} ops read from backend.h`);
  const camel = (stem: string) => stem.replace(/_(\w)/g, (_, c: string) => c.toUpperCase());
  assert.equal(Object.keys(ops).sort(), methods.map(camel).sort());
});

test.run();
