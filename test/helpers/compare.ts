// Comparisons and fixture reading shared by the tests: the op tests' checks of outputs (bits, blocks left
// untouched, relative L2 and elementwise bounds), their float32 NaN poison and packed-list offsets, and
// the model tests' checks of rejections (class, code, message).
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as assert from 'uvu/assert';

import { BadModelError } from '../../lib/errors';
import { loadModel } from '../../lib/index';
import { readHeaderFromBuffer } from '../../lib/safetensors';

export { relL2, sharedDir, sharedImages } from '../../scripts/bench-common';

/** All tensors of a safetensors file as float32 (F32) or uint8 (U8) arrays. */
export function readSafetensors(file: string): Record<string, { dims: number[]; data: Float32Array | Uint8Array }> {
  const buf = fs.readFileSync(file);
  const header = readHeaderFromBuffer(buf);
  const out: Record<string, { dims: number[]; data: Float32Array | Uint8Array }> = {};
  for (const t of header.tensors) {
    const bytes = buf.subarray(header.dataOffset + t.begin, header.dataOffset + t.end);
    const copy = new Uint8Array(bytes); // aligned copy
    out[t.name] = { dims: t.shape, data: t.dtype === 'U8' ? copy : new Float32Array(copy.buffer) };
  }
  return out;
}

export const repoRoot = path.resolve(__dirname, '..', '..');
export const fixturesDir = path.join(repoRoot, 'test', 'fixtures');
/** The small untrained model the tests use where they need known sizes and speed (make-stand-in.ts). */
export const standIn = path.join(fixturesDir, 'stand-in');

type Numbers = Float32Array | Uint16Array | Int32Array | Uint8Array;
const bitsOf = (a: Numbers): Exclude<Numbers, Float32Array> | Uint32Array =>
  a instanceof Float32Array ? new Uint32Array(a.buffer, a.byteOffset, a.length) : a;

/** Every element the same, floats bit for bit (a NaN equals the same NaN). */
export function assertSameBits(got: Numbers, want: Numbers, what: string): void {
  const g = bitsOf(got), w = bitsOf(want);
  assert.is(g.length, w.length, `${what}: lengths`);
  let i = 0;
  while (i < g.length && g[i] === w[i]) i++;
  assert.ok(i === g.length, `${what}: first difference at element ${i}: got ${got[i]}, want ${want[i]}`);
}

/** Rows 0 .. rows - 1, columns 0 .. cols - 1 of a (.., ld) array, packed. */
export function block(a: Float32Array, rows: number, cols: number, ld: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(a.subarray(r * ld, r * ld + cols), r * cols);
  return out;
}

/** Elements of got that the op must not write (outside rows < rows, cols < cols) keep the bits of before. */
export function assertUntouched(got: Float32Array | Uint16Array, before: Float32Array | Uint16Array, rows: number, cols: number,
  ld: number, what: string): void {
  const g = bitsOf(got), b = bitsOf(before);
  for (let i = 0; i < g.length; i++) {
    const r = Math.floor(i / ld), c = i % ld;
    if ((r >= rows || c >= cols) && g[i] !== b[i]) assert.unreachable(`${what}: element (${r}, ${c}) outside the output was written`);
  }
}

export function assertWithin(err: number, tol: number, what: string): void {
  assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol.toExponential(3)}`);
}

/** Elementwise |got - want| <= rel * |want| (+ a floor for values near zero). */
export function assertClose(got: Float32Array, want: Float32Array, rel: number, abs: number, what: string): void {
  assert.is(got.length, want.length, `${what}: lengths`);
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= rel * Math.abs(want[i]) + abs))
      assert.unreachable(`${what}: element ${i}: got ${got[i]}, want ${want[i]} (difference ${d.toExponential(3)})`);
  }
}

/** Packed-list offsets (B + 1) of images with these row counts. */
export function offsetsOf(counts: number[]): Int32Array {
  const offsets = new Int32Array(counts.length + 1);
  counts.forEach((n, b) => (offsets[b + 1] = offsets[b] + n));
  return offsets;
}

/** n float32 NaNs: an output no element of which the op may leave unwritten. */
export const poisonF32 = (n: number): Float32Array => new Float32Array(n).fill(NaN);

/** `p` rejects with an instance of `cls` whose message matches `pattern`. */
export async function rejectsWith(p: Promise<unknown>, cls: Function, pattern: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, cls, String(err));
    assert.match((err as Error).message, pattern);
    return;
  }
  assert.unreachable(`expected a rejection matching ${pattern}`);
}

/** Loading `source` on the CPU fails with a BadModelError (code ERR_STEP_BAD_MODEL) matching `pattern`. */
export async function rejectsLoad(source: string | Buffer, pattern: RegExp): Promise<void> {
  try {
    await loadModel(source, { device: 'cpu' });
  } catch (err) {
    assert.instance(err, BadModelError, String(err));
    assert.is((err as BadModelError).code, 'ERR_STEP_BAD_MODEL');
    assert.match((err as Error).message, pattern);
    return;
  }
  assert.unreachable(`loading should have failed with ${pattern}`);
}
