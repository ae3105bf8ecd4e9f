// The CUDA emulator's own tests (native/cuda/emu; the emulator build, npm run build:emu, loaded with
// STEP_SEG_BINARY=build-emu/Release/step_seg.node). Two kinds:
//   - its PTX instructions against ../shared/ptx-vectors, bit for bit: mma.sync.m16n8k16 bf16 and
//     ldmatrix.x4 (.trans), whose expected outputs come from NVIDIA CuTe's layout tables (every MMA sum
//     there is exact, so the order of the additions cannot matter);
//   - one planted bug of each class the emulator claims to catch, each beside its correct twin: the
//     correct kernel must run clean and give the right output, the buggy one must be caught (a fault
//     naming the kernel and the class, or, for a fragment layout bug, output the test sees is wrong).
// Skipped (counted) in a binary without the emulator; a failure under STEP_SEG_REQUIRE_CUDA=1.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { cudaRequired, fromBf16, toBf16 } from '../helpers/gpu';
import { randn, rng } from '../helpers/random';
import { skip, type TestCrumbs } from '../helpers/skip';

interface EmuOps {
  mma(a: Uint32Array, b: Uint32Array, c: Float32Array): Float32Array;
  ldmatrix(smem: Uint16Array, addr: Int32Array, trans: boolean): Uint32Array;
  plantedBugs(): string[];
  planted(name: string, bug: boolean, x: Float32Array): Float32Array;
  capture(): string[];
  lastFault(): string;
  resetFault(): void;
  setMemoryCapacity(bytes: number): void;
}

const emu = (loadBinding().binding as unknown as { emuOps?: EmuOps }).emuOps;
const vectors = path.resolve(__dirname, '../../../shared/ptx-vectors');

function emuTest(name: string, body: (ops: EmuOps) => void, needsVectors = false): void {
  test(`emulator ${name}`, (ctx: TestCrumbs) => {
    if (!emu) {
      if (cudaRequired) assert.unreachable('STEP_SEG_REQUIRE_CUDA is set but this binary has no emulator (npm run build:emu)');
      return skip(ctx, 'not the emulator build (npm run build:emu, then STEP_SEG_BINARY=build-emu/Release/step_seg.node)');
    }
    if (needsVectors && !fs.existsSync(vectors)) return skip(ctx, '../shared/ptx-vectors is absent');
    body(emu);
  });
}

const f32bits = (x: Float32Array): Uint32Array => new Uint32Array(x.buffer, x.byteOffset, x.length);

// ---- PTX instructions against CuTe's tables -------------------------------------------------------------

interface MmaCase {
  name: string;
  lanes: { a: number[]; b: number[]; c_bits: number[]; d_bits: number[] }[];
}

emuTest('mma.sync.m16n8k16 bf16 reproduces every ptx-vectors case bit for bit', (ops) => {
  const file = JSON.parse(fs.readFileSync(path.join(vectors, 'mma_m16n8k16_row_col_f32_bf16_bf16_f32.json'), 'utf8'));
  const cases: MmaCase[] = file.cases;
  assert.ok(cases.length >= 11, 'cases');
  for (const c of cases) {
    const a = new Uint32Array(128), b = new Uint32Array(64), cc = new Float32Array(128);
    const want = new Uint32Array(128);
    c.lanes.forEach((lane, l) => {
      a.set(lane.a, 4 * l), b.set(lane.b, 2 * l), f32bits(cc).set(lane.c_bits, 4 * l), want.set(lane.d_bits, 4 * l);
    });
    const got = f32bits(ops.mma(a, b, cc));
    for (let i = 0; i < 128; i++)
      if (got[i] !== want[i]) assert.unreachable(`${c.name}: lane ${i >> 2} d${i & 3} = 0x${got[i].toString(16)}, want 0x${want[i].toString(16)}`);
  }
}, true);

for (const trans of [false, true]) {
  const file = trans ? 'ldmatrix_m8n8_x4_trans_b16.json' : 'ldmatrix_m8n8_x4_b16.json';
  emuTest(`ldmatrix.x4${trans ? '.trans' : ''} reproduces every ptx-vectors case bit for bit`, (ops) => {
    const cases: { name: string; smem_b16: number[]; addr_elem: number[]; lanes: { r: number[] }[] }[] = JSON.parse(
      fs.readFileSync(path.join(vectors, file), 'utf8'),
    ).cases;
    assert.ok(cases.length >= 4, 'cases');
    for (const c of cases) {
      const got = ops.ldmatrix(Uint16Array.from(c.smem_b16), Int32Array.from(c.addr_elem), trans);
      c.lanes.forEach((lane, l) => {
        for (let j = 0; j < 4; j++)
          if (got[4 * l + j] !== lane.r[j] >>> 0)
            assert.unreachable(`${c.name}: lane ${l} r${j} = 0x${got[4 * l + j].toString(16)}, want 0x${(lane.r[j] >>> 0).toString(16)}`);
      });
    }
  }, true);
}

// ---- planted bugs ------------------------------------------------------------------------------------

/** Runs the correct twin (must pass and equal `want`) and the buggy one (must throw matching `caught`). */
function planted(ops: EmuOps, name: string, x: Float32Array, want: Float32Array, caught: RegExp): void {
  const good = ops.planted(name, false, x);
  assert.is(good.length, want.length, `${name}: output length`);
  for (let i = 0; i < want.length; i++)
    if (Math.abs(good[i] - want[i]) > 1e-5 * (1 + Math.abs(want[i]))) assert.unreachable(`${name} (correct twin): y[${i}] = ${good[i]}, want ${want[i]}`);
  assert.is(ops.lastFault(), '', `${name}: the correct twin leaves no fault`);
  let message = '';
  try {
    ops.planted(name, true, x);
  } catch (err) {
    message = (err as Error).message;
  } finally {
    ops.resetFault();
  }
  assert.ok(message, `${name}: the planted bug was not caught`);
  assert.match(message, caught, `${name}: ${message}`);
  assert.match(message, /planted_\w+_kernel/, `${name}: the report names the kernel: ${message}`);
}

const xs = (n: number, seed: number) => randn(n, rng(seed));
const neighbour = (x: Float32Array, stride = 1) =>
  Float32Array.from(x, (_, i) => x[(Math.floor(i / stride) + 1) % (x.length / stride) * stride + (i % stride)]);

emuTest('catches a shared-memory race: a missing __syncthreads', (ops) => {
  const x = xs(128, 1);
  planted(ops, 'barrier', x, neighbour(x), /shared-memory race .* no __syncthreads/);
});

emuTest('catches a cp.async read before its wait_group', (ops) => {
  const x = xs(4 * 64, 2);
  planted(ops, 'wait_group', x, neighbour(x, 4), /shared-memory race|cp\.async/);
});

emuTest('catches a read one element past an allocation', (ops) => {
  const x = xs(96, 3);
  planted(ops, 'past_end', x, neighbour(x), /load of 4 bytes: address 0x[0-9a-f]+ is 0 bytes past the end of a 384-byte allocation/);
});

emuTest('catches a misaligned float4 load', (ops) => {
  const x = xs(4 * 32 + 4, 4);
  const want = Float32Array.from({ length: 32 }, (_, i) => x[4 + 4 * i] + x[5 + 4 * i] + x[6 + 4 * i] + x[7 + 4 * i]);
  planted(ops, 'misaligned', x, want, /misaligned 16-byte load/);
});

emuTest('catches a barrier that exited threads never reach', (ops) => {
  const x = xs(64, 5);
  planted(ops, 'early_exit', x, Float32Array.from({ length: 32 }, (_, i) => x[63 - i]), /deadlock: __syncthreads .* reached by 32 of 64 threads/);
});

emuTest('catches a shuffle whose mask leaves out calling lanes', (ops) => {
  const x = xs(32, 6);
  const sum = x.reduce((s, v) => s + v, 0);
  planted(ops, 'mask', x, new Float32Array(32).fill(sum), /mask 0xffff/);
});

emuTest('a fragment lane off by one gives output the comparison catches', (ops) => {
  const ab = roundedBf16(xs(256 + 128, 7));
  const want = new Float32Array(128); // D = A B^T, A (16, 16), B (8, 16)
  for (let m = 0; m < 16; m++)
    for (let n = 0; n < 8; n++) {
      let s = 0;
      for (let k = 0; k < 16; k++) s += ab[m * 16 + k] * ab[256 + n * 16 + k];
      want[m * 8 + n] = s;
    }
  const good = ops.planted('fragment', false, ab);
  for (let i = 0; i < 128; i++) assert.ok(Math.abs(good[i] - want[i]) < 1e-5 * (1 + Math.abs(want[i])), `correct twin D[${i}]`);
  const bad = ops.planted('fragment', true, ab);
  let wrong = 0;
  for (let i = 0; i < 128; i++) if (Math.abs(bad[i] - want[i]) > 1e-3 * (1 + Math.abs(want[i]))) wrong++;
  assert.ok(wrong >= 8, `the off-by-one fragment changes the output (${wrong} of 128 elements differ)`);
});

emuTest('every planted bug has a test above', (ops) => {
  assert.equal(ops.plantedBugs().sort(), ['barrier', 'early_exit', 'fragment', 'mask', 'misaligned', 'past_end', 'wait_group']);
});

emuTest('graphs: a capture records and replays; what a capture forbids fails and invalidates it', (ops) => {
  const lines = ops.capture();
  assert.equal(lines, [
    'begin: cudaSuccess',
    'end: cudaSuccess',
    'after capture: 0.000000', // recorded, not run
    'instantiate: cudaSuccess',
    'launch: cudaSuccess',
    'launch: cudaSuccess',
    'after two replays: 6.000000',
    'stream synchronize: cudaErrorStreamCaptureUnsupported',
    'stream synchronize, then end: cudaErrorStreamCaptureInvalidated',
    'malloc: cudaErrorStreamCaptureUnsupported',
    'malloc, then end: cudaErrorStreamCaptureInvalidated',
    'copy from pageable memory: cudaErrorStreamCaptureUnsupported',
    'copy from pageable memory, then end: cudaErrorStreamCaptureInvalidated',
    'device synchronize: cudaErrorStreamCaptureUnsupported',
    'device synchronize, then end: cudaErrorStreamCaptureInvalidated',
  ]);
});

emuTest('launch limits of sm_90 and out of memory as a typed error', (ops) => {
  ops.setMemoryCapacity(64 * 1024);
  try {
    assert.throws(() => ops.planted('barrier', false, new Float32Array(128 * 1024)), (err: Error & { code?: string }) =>
      err.code === 'ERR_STEP_OUT_OF_MEMORY' && /cudaErrorMemoryAllocation/.test(err.message));
  } finally {
    ops.setMemoryCapacity(16 * 1024 ** 3);
  }
  // 2048 threads in a block: a launch error, as on the GPU (the planted kernel takes its block from x).
  assert.throws(() => ops.planted('barrier', false, new Float32Array(2048)), /cudaErrorInvalidConfiguration.*over 1024 threads/);
  ops.resetFault();
});

function roundedBf16(x: Float32Array): Float32Array {
  return fromBf16(toBf16(x));
}

test.run();
