/**
 * Memory accounting. Every call reserves, before it allocates, what each stage will hold: the copy of
 * the caller's input, the decoded and resized image, the forward's activations, and the result
 * arrays (the forward's and the results' bytes are the engine's own estimates, native/core/cost.h,
 * which NativeModel.planSegment / planFeatures return). Reservations are process-wide (every worker thread's calls count against one budget, kept
 * by the addon) and last until the call settles, so calls in flight are counted together. A call that
 * would go over the budget is refused with an OutOfMemoryError before the allocation it would make.
 *
 * Budget: STEP_SEG_MEMORY_LIMIT_MB when set; else the free memory (at least half the total) plus what
 * calls in flight have reserved (their memory is partly counted as used already).
 */
import * as os from 'node:os';

import { loadBinding } from './binding';
import { OutOfMemoryError } from './errors';

const kMiB = 2 ** 20;
const mib = (bytes: number) => Math.max(0, Math.round(bytes / kMiB));

/** The budget, in bytes, for all calls in flight together. */
export function memoryBudget(): number {
  const limit = Number(process.env.STEP_SEG_MEMORY_LIMIT_MB) * kMiB;
  if (limit > 0) return limit;
  return Math.max(os.freemem() + loadBinding().binding.memoryReserved(), os.totalmem() * 0.5);
}

/** One call's reservations. */
export class Ledger {
  #bytes = 0;
  readonly #parts: string[] = [];

  /** Reserves `bytes` for `what`, or throws OutOfMemoryError (nothing reserved) when the budget is spent. */
  reserve(bytes: number, what: string): void {
    bytes = Math.ceil(bytes);
    if (!(bytes > 0)) return;
    const binding = loadBinding().binding;
    const budget = memoryBudget();
    if (!Number.isSafeInteger(bytes) || !binding.memoryReserve(bytes, Math.floor(budget))) {
      const others = binding.memoryReserved() - this.#bytes;
      throw new OutOfMemoryError(
        `this input needs about ${mib(this.#bytes + bytes)} MiB (${[...this.#parts, `${what} ${mib(bytes)} MiB`].join(', ')}) but about ` +
          `${mib(budget - others)} MiB is available${others > kMiB ? ` (${mib(others)} MiB held by other calls in flight)` : ''}: ` +
          'use a smaller size, tiles, fewer images per call or fewer calls at once (STEP_SEG_MEMORY_LIMIT_MB sets the budget)',
      );
    }
    this.#bytes += bytes;
    this.#parts.push(`${what} ${mib(bytes)} MiB`);
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Gives everything back (the call has settled). */
  release(): void {
    if (this.#bytes > 0) loadBinding().binding.memoryRelease(this.#bytes);
    this.#bytes = 0;
  }
}

/** libvips' working set while it decodes and resizes an image `width` pixels wide (a band of rows, per thread). */
export function decodeWorkBytes(width: number): number {
  return (32 << 20) + width * 4 * 256;
}
