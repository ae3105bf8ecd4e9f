// What the case tables (scripts/cases/<stem>.ts) share: the shrink of their largest shapes on the CUDA
// emulator, which runs every thread of every block on the CPU (the edge shapes stay), and the ViT
// sizes the benchmark reads.

/** `big(onGpu, onEmulator)`: a case table's size for a large shape, the second where CUDA is emulated. */
export type Big = (onGpu: number, onEmulator: number) => number;

/** The sizes of a real GPU everywhere (the benchmark, the CPU tests). */
export const fullSize: Big = (onGpu) => onGpu;

/** ViT-S, -B and -L: width C and heads (head width 64). */
export const kVitWidths = [
  { name: 'S', C: 384, heads: 6 },
  { name: 'B', C: 768, heads: 12 },
  { name: 'L', C: 1024, heads: 16 },
] as const;
/** Tokens of 512², 768² and 1024² images at patch 16 (the class token in kBenchTokens, not in kBenchAttentionT). */
export const kBenchTokens = [1025, 2305, 4097];
export const kBenchAttentionT = [1024, 2304, 4096];
export const kBenchHeadDim = 64;
