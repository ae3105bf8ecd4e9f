// Comparisons and fixture reading shared by the tests.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { readHeaderFromBuffer } from '../../lib/safetensors';

/** ||got - ref|| / ||ref|| in double precision; Infinity when any value of got is not finite. */
export function relL2(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`length ${got.length} != ${ref.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

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
/** ../shared beside the clone (real photos, data); tests that need it skip (helpers/skip.ts) when it is absent. */
export const sharedDir = path.resolve(repoRoot, '..', 'shared');
export function sharedImages(): string[] {
  const dir = path.join(sharedDir, 'images');
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => /\.(jpe?g|png|webp)$/i.test(f)).map((f) => path.join(dir, f));
}
