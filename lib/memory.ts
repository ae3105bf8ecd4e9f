/**
 * Memory accounting. Every call reserves, before it allocates, what each stage will hold: the copy of
 * the caller's input, the decoded and resized image, the forward's activations, and the result
 * arrays. Reservations are process-wide (every worker thread's calls count against one budget, kept
 * by the addon) and last until the call settles, so calls in flight are counted together. A call that
 * would go over the budget is refused with an OutOfMemoryError before the allocation it would make.
 *
 * Budget: STEP_SEG_MEMORY_LIMIT_MB when set; else the free memory (at least half the total) plus what
 * calls in flight have reserved (their memory is partly counted as used already).
 */
import * as os from 'node:os';

import { loadBinding } from './binding';
import type { ModelConfig } from './config';
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

/** Sizes of one forward of the encoder over a batch (or one tile). */
export interface ForwardShape {
  /** images in the forward */
  images: number;
  /** patch-grid cells of all images */
  cells: number;
  /** padded pixels of the batch: images * H * W, H and W the largest padded sides */
  paddedPixels: number;
  /** the largest single image's padded pixels (the learned policy's CNN runs on one image at a time) */
  largestPixels: number;
  /** tokens of the largest image (attention scratch) */
  largestTokens: number;
  learnedPolicy: boolean;
}

/**
 * Bytes the CPU engine holds at the peak of one forward (native/core/model.cpp, native/cpu): the
 * normalised pixels, position embeddings, im2col and patch embedding, the residual stream and each
 * block's buffers (norm, qkv, attention, MLP), an exit's logits and compacted copy, the heads' and
 * the patch grid's logits (twice: unshare's blend reads a flat copy), halting's cell labels, the attention kernel's packed K / V and per-thread score rows, and the
 * learned policy's CNN (about 80 floats per pixel).
 */
export function forwardBytes(c: ModelConfig, s: ForwardShape): number {
  const C = c.embedDim, Hd = C * c.mlpRatio, K = c.numClasses, P = c.patchSize;
  const pre = c.regTokens + (c.classToken ? 1 : 0);
  const A = s.cells + s.images * pre; // tokens, at most (no merging)
  const threads = loadBinding().binding.cpuInfo().threads;
  const floats =
    3 * s.paddedPixels +
    s.cells * (C + 2 * K + 1) +
    s.cells * (3 * P * P + C + K) +
    A * (8 * C + Hd + 2 * K) +
    2 * A * C +
    // per thread: attention's score rows S^T (T x 128), and for bf16 their copy as pairs (T / 2 x 128)
    threads * (s.largestTokens + pre) * 192 +
    (s.learnedPolicy ? 80 * s.largestPixels : 0);
  return 4 * floats + 32 * s.cells + (16 << 20);
}

/** Bytes of the arrays a segment() result holds for one image (labels, probabilities, logits, token map). */
export function resultBytes(c: ModelConfig, outPixels: number, cells: number, probabilities: boolean, logits: boolean): number {
  const K = c.numClasses;
  return (K <= 256 ? 1 : 2) * outPixels + (probabilities ? 4 * K * outPixels : 0) + (logits ? 4 * K * cells : 0) + 6 * cells + 4 * K * cells;
}

/** libvips' working set while it decodes and resizes an image `width` pixels wide (a band of rows, per thread). */
export function decodeWorkBytes(width: number): number {
  return (32 << 20) + width * 4 * 256;
}
