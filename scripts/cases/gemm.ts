// gemm's case table: the CPU op against double precision (every SIMD kernel), the CUDA kernels against
// the CPU op (every variant allowed: shapes off every tile, every epilogue, strides, rows on the
// device), and the ViT shapes scripts/bench-cuda.ts times.
import { type Big, kBenchTokens, kVitWidths } from './sizes';

export type Epilogue = 'none' | 'gelu' | 'residual' | 'relu6' | 'sigmoid';

export interface GemmCase {
  M: number; // rows of the arrays (the bound when mDevice is set)
  N: number;
  K: number;
  epilogue: Epilogue;
  bias: boolean;
  colScale: boolean;
  lda?: number;
  ldc?: number;
  mDevice?: number; // CUDA: the real row count, read on the device
}

/** CPU shapes: ViT sizes, primes, ones, sizes just off any tile, strided operands. */
export function gemmCases(): GemmCase[] {
  const shapes: [number, number, number][] = [
    [1, 1, 1], [1, 7, 3], [5, 1, 9], [3, 5, 1], [17, 31, 13], [64, 64, 64], [65, 63, 67],
    [97, 130, 255], [321, 576, 192], [33, 11, 192], [200, 768, 48], [256, 1000, 17], [7, 2304, 96],
  ];
  const eps: Epilogue[] = ['none', 'gelu', 'residual'];
  const cases: GemmCase[] = [];
  shapes.forEach(([M, N, K], i) => {
    const epilogue = eps[i % 3];
    cases.push({ M, N, K, epilogue, bias: i % 2 === 0, colScale: epilogue === 'residual' && i % 4 < 2 });
  });
  cases.push({ M: 50, N: 40, K: 30, epilogue: 'residual', bias: true, colScale: true, lda: 37, ldc: 45 });
  cases.push({ M: 129, N: 65, K: 70, epilogue: 'gelu', bias: true, colScale: false, lda: 71, ldc: 66 });
  // EfficientNet's pointwise convolutions and the merge-policy heads; K past one K block (384)
  for (const [M, N, K] of [[97, 40, 17], [640, 96, 16], [33, 1, 320], [70, 33, 1000]] as const)
    for (const epilogue of ['relu6', 'sigmoid'] as const) cases.push({ M, N, K, epilogue, bias: true, colScale: false });
  return cases;
}

export const kEpilogues: Epilogue[] = ['none', 'gelu', 'residual', 'relu6', 'sigmoid'];

/** CUDA: M x N x K off every tile (each M, N, K), epilogues in turn (seeds 1000 + i). */
export function gemmCudaGrid(big: Big): GemmCase[] {
  const cases: GemmCase[] = [];
  let i = 0;
  for (const M of [1, 17, 129, big(1025, 257)])
    for (const N of [8, 11, 384, big(1152, 136)])
      for (const K of [16, 30, 384]) {
        const epilogue = kEpilogues[i % kEpilogues.length];
        cases.push({ M, N, K, epilogue, bias: i % 2 === 0, colScale: epilogue === 'residual' && i % 4 < 2 });
        i++;
      }
  return cases;
}

/** CUDA: every epilogue, with and without bias (column scale with the residual's bias) (seeds 2000 + i). */
export function gemmCudaEpilogues(): GemmCase[] {
  const cases: GemmCase[] = [];
  for (const [M, N, K] of [[129, 384, 384], [70, 11, 30]])
    for (const epilogue of kEpilogues)
      for (const bias of [false, true]) cases.push({ M, N, K, epilogue, bias, colScale: epilogue === 'residual' && bias });
  return cases;
}

/** CUDA: row strides (seeds 3000 + i). */
export const kGemmCudaStrides: GemmCase[] = [
  { M: 129, N: 384, K: 384, lda: 392, ldc: 390, epilogue: 'residual', bias: true, colScale: true }, // mma allowed
  { M: 129, N: 384, K: 384, lda: 385, ldc: 384, epilogue: 'gelu', bias: true, colScale: false }, // lda % 8 != 0
  { M: 65, N: 64, K: 64, lda: 64, ldc: 67, epilogue: 'none', bias: false, colScale: false }, // ldc odd
];

/** CUDA: rows on the device: none, one, some, all, past the bound (clamped) (seeds 4000 + i). */
export function gemmCudaDeviceRows(big: Big): GemmCase[] {
  const cases: GemmCase[] = [];
  let seed = 4000;
  for (const [M, N, K] of [[129, 384, 384], [big(1025, 257), big(1152, 136), 384], [129, 11, 30]])
    for (const mDevice of [0, 1, 100, M, M + 500]) // M + 500: clamped to the bound
      cases.push({ M, N, K, epilogue: seed++ % 2 ? 'residual' : 'gelu', bias: true, colScale: false, mDevice });
  return cases;
}

/** The benchmark: the four Linear layers of each ViT width at each token count (bf16 in and out, bias). */
export function gemmBenchShapes(): { label: string; M: number; N: number; K: number }[] {
  const out: { label: string; M: number; N: number; K: number }[] = [];
  for (const M of kBenchTokens)
    for (const { name, C } of kVitWidths)
      for (const [layer, N, K] of [['qkv', 3 * C, C], ['proj', C, C], ['fc1', 4 * C, C], ['fc2', C, 4 * C]] as const)
        out.push({ label: `${name} ${layer}`, M, N, K });
  return out;
}
