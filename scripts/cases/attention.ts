// attention's case table: packed lists for the CPU op against double precision, for the CUDA kernels
// against the CPU op (uneven batches with an empty image, head widths flash runs and only naive runs),
// and the ViT shapes scripts/bench-cuda.ts times.
import { type Big, kBenchAttentionT, kBenchHeadDim, kVitWidths } from './sizes';

/** CPU: one token, uneven images, a query block (128) just crossed, wide heads, odd lengths. */
export const attentionCases: { name: string; lengths: number[]; H: number; D: number }[] = [
  { name: 'one image, one token', lengths: [1], H: 2, D: 8 },
  { name: 'uneven batch', lengths: [5, 70, 1, 129], H: 3, D: 16 },
  { name: 'one image past a query block', lengths: [65], H: 1, D: 64 },
  { name: 'wide heads', lengths: [40, 33], H: 2, D: 96 },
  { name: 'odd head width, keys past a key block', lengths: [301, 2], H: 2, D: 23 },
];

/** CUDA: T = 1, 5, 63, 64, 65, a long image and an empty one, at every head width flash runs (seeds 5000 + D). */
export const attentionCudaLengths = (big: Big): number[] => [5, big(1025, 193), 1, 0, 64, 63, 65];
export const kAttentionCudaHeads: [number, number][] = [[3, 32], [3, 64], [2, 96], [2, 128]];
/** CUDA: head widths only the naive kernel runs, over T = [1, 33, 70] (seeds 5500 + D). */
export const kAttentionNaiveLengths = [1, 33, 70];
export const kAttentionNaiveHeads: [number, number][] = [[2, 8], [3, 80], [1, 200]];

/** The benchmark: one image of T tokens per ViT width, D = 64. */
export function attentionBenchShapes(): { label: string; T: number; H: number; D: number }[] {
  return kBenchAttentionT.flatMap((T) => kVitWidths.map(({ name, heads }) => ({ label: `${name} attn`, T, H: heads, D: kBenchHeadDim })));
}
