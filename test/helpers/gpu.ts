// The CUDA op tests' side of the CUDA op seam (lib/cuda-ops.ts, re-exported here): gpuTests(), a test
// that runs with the CUDA ops or records a skip, the case tables' sizes here (big), bf16 NaN poison and
// bfloat16 conversions (round to nearest even, as __float2bfloat16_rn).
import type { test } from 'uvu';

import { type CudaOps, cudaRequired, findCudaOps, onEmulator } from '../../lib/cuda-ops';
import type { Big } from '../../scripts/cases/sizes';
import { skip } from './skip';

export * from '../../lib/cuda-ops';

let announced = false; // the device, once per process
/**
 * `gpuTest(name, body)` for a test file of CUDA ops: body runs with the CUDA ops where a GPU (or the
 * emulator) is usable; otherwise a recorded skip with the reason, or a failure under STEP_SEG_REQUIRE_CUDA.
 */
export function gpuTests(suite: typeof test): (name: string, body: (ops: CudaOps) => void) => void {
  let gpu: CudaOps | undefined, reason = '';
  suite.before(async () => {
    const found = await findCudaOps();
    if ('ops' in found) {
      gpu = found.ops;
      if (!announced) console.log(`  cuda ops: running on ${found.device}`);
      announced = true;
    } else reason = found.reason;
  });
  return (name, body) =>
    suite(`cuda ${name}`, (ctx) => {
      if (gpu) body(gpu);
      else if (cudaRequired) throw new Error(`STEP_SEG_REQUIRE_CUDA is set but CUDA cannot run: ${reason}`);
      else skip(ctx, reason);
    });
}

let emulated: boolean | undefined;
/**
 * The case tables' size of a large shape (scripts/cases/sizes.ts): on the CUDA emulator, which runs
 * every thread of every block on the CPU, the largest shapes shrink; the edge shapes stay.
 */
export const big: Big = (onGpu, onEmu) => ((emulated ??= onEmulator()) ? onEmu : onGpu);

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bf16 bits, round to nearest even (overflow to inf); NaN -> 0x7fff (CUDA's canonical NaN). */
export function toBf16(x: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    f32[0] = x[i];
    const b = u32[0];
    out[i] = Number.isNaN(f32[0]) ? 0x7fff : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/** bf16 bits -> float32 (exact). */
export function fromBf16(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return out;
}

/** The float32 values of x rounded to bf16. */
export const roundBf16 = (x: ArrayLike<number>): Float32Array => fromBf16(toBf16(x));

/** A quiet NaN in bf16, for poisoning bf16 outputs. */
export const kBf16NaN = 0x7fc0;

/** n bf16 NaNs: a bf16 output no element of which the op may leave unwritten. */
export const poisonBf16 = (n: number): Uint16Array => new Uint16Array(n).fill(kBf16NaN);
