// The CUDA op seam: the type of `cudaOps` (exported by native/addon/cuda_binding.cpp when the CUDA
// backend is compiled in), finding it or the reason it cannot run, and whether the loaded binary is the
// CUDA emulator. For the CUDA op tests (test/ops) and the CUDA benchmarks (scripts/bench-cuda*.ts); not
// part of the package API (lib/index.ts does not export it).
import { loadBinding } from './binding';
import { cudaStatus } from './index';

export type Epilogue = 'none' | 'gelu' | 'residual' | 'relu6' | 'sigmoid';
export type GemmKernelName = 'auto' | 'simple' | 'mma128x128' | 'mma128x64' | 'mma64x64';
export type AttentionKernelName = 'auto' | 'naive' | 'flash';
export type LayerNormKernelName = 'auto' | 'simple' | 'vec';

/** Every typed array is copied to the device; outputs come back whole (untouched elements included). */
export interface CudaGemmParams {
  M: number; // upper bound of the rows when mDevice is set
  N: number;
  K: number;
  a: Uint16Array; // (M, K) bf16, row stride lda (default K)
  lda?: number;
  w: Uint16Array; // (N, K) bf16
  bias?: Float32Array; // (N)
  epilogue?: Epilogue;
  residual?: Float32Array; // (M, N) row stride ldc; may be the same array as c
  colScale?: Float32Array; // (N)
  c?: Float32Array; // (M, N) row stride ldc (default N); exactly one of c and cBf16
  cBf16?: Uint16Array;
  ldc?: number;
  mDevice?: number; // the real row count, read on the device
  kernel?: GemmKernelName;
}
export interface CudaAttentionParams {
  batch: number;
  offsets: Int32Array; // (B + 1)
  heads: number;
  headDim: number;
  scale: number;
  qkv?: Float32Array; // (A, 3, H, D); exactly one of qkv and qkvBf16
  qkvBf16?: Uint16Array;
  out?: Float32Array; // (A, H, D); exactly one of out and outBf16
  outBf16?: Uint16Array;
  maxSeqlen?: number; // default: the largest T of offsets
  kernel?: AttentionKernelName;
}
export interface CudaLayerNormParams {
  rows: number; // upper bound when rowsDevice is set
  C: number;
  eps?: number;
  x: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
  y?: Float32Array; // at least one of y and yBf16
  yBf16?: Uint16Array;
  rowsDevice?: number;
  kernel?: LayerNormKernelName;
}
export interface CudaImageNormalizeParams {
  src: Uint8Array; // (h, w, channels)
  h: number;
  w: number;
  channels: 3 | 4;
  mean: number[]; // 3, in 0..255 pixel units
  std: number[];
  outH?: number;
  outW?: number;
  out: Float32Array; // (3, outH, outW)
  channelsLast?: boolean; // cpuImageNormalize only
}
export interface CudaPatchGatherParams {
  images: number;
  height: number;
  width: number;
  patch: number;
  pixels: Float32Array; // (B, 3, H, W)
  tokens: number; // upper bound when tokensDevice is set
  rects: Int32Array; // (tokens, 4): image, row, col, size
  out?: Float32Array; // (tokens, 3 P P)
  outBf16?: Uint16Array;
  tokensDevice?: number;
}
export interface CudaTokenPosEmbedParams {
  batch: number;
  C: number;
  prefix: number;
  prefixTokens?: Float32Array;
  posPrefix?: Float32Array;
  posGrid: Float32Array;
  gridOffset: Int32Array;
  gridW: Int32Array;
  offsets: Int32Array;
  rects: Int32Array;
  embedded: Float32Array;
  out: Float32Array; // (A, C) or more
  rowsBound?: number; // default A
}

export interface CudaWindowScoreParams {
  image: Uint8Array; // (h, w, channels)
  h: number;
  w: number;
  channels?: number; // default 3
  patch: number;
  gh: number;
  gw: number;
  levels: Int32Array; // window sides, in patches, largest first
  colorTau: number;
  textureTau: number;
  scores: Float32Array; // levels concatenated
}
export interface CudaSuperpatchSelectParams {
  image?: number;
  gh: number;
  gw: number;
  levels: Int32Array; // window sides, in patches, largest first
  thresholds: Float32Array;
  scores: Float32Array;
  rects: Int32Array; // (gh * gw, 4)
  count: Int32Array; // (1)
  tokenOfPatch: Int32Array; // (gh * gw)
}
export interface CudaUnshareParams {
  K: number;
  tokens: number;
  rects: Int32Array;
  logits: Float32Array; // (tokens, K)
  gridOffset: Int32Array; // (B)
  gridW: Int32Array; // (B)
  grid: Float32Array; // (cells, K)
  mode: 'copy' | 'blend';
  gridH?: Int32Array; // (B), blend
  flat?: Float32Array; // (cells, K) workspace, blend
  tokensDevice?: number; // the real token count, read on the device
}
export interface CudaTokenHaltParams {
  batch: number;
  K: number;
  prefix?: number;
  offsets: Int32Array;
  logits: Float32Array; // (A, K)
  threshold: number;
  topK: number;
  halt: Uint8Array; // (A)
  maxSeqlen?: number; // default: the largest T of offsets
  // agreement with neighbours (all or none): ops.h TokenHaltParams
  rectOfRow?: Int32Array; // (A)
  rects?: Int32Array; // (rects, 4)
  gridOffset?: Int32Array; // (B)
  gridH?: Int32Array;
  gridW?: Int32Array;
  cellLabel?: Int32Array; // (cells) in and out
}
export interface CudaTokenCompactParams {
  batch: number;
  C: number;
  offsets: Int32Array;
  halt: Uint8Array; // (A)
  x: Float32Array; // (A, C)
  out: Float32Array; // (A', C) or more
  newOffsets: Int32Array; // (B + 1)
  srcRow: Int32Array; // (A') or more
  rowsBound?: number; // default A
}
export interface CudaTokenScatterParams {
  rows: number;
  K: number;
  src: Float32Array; // (rows, K)
  index: Int32Array; // (rows)
  mask?: Uint8Array; // (rows)
  table: Float32Array; // (table rows, K)
  rowsDevice?: number; // the real row count, read on the device
}
export interface CudaTokenRowsInitParams {
  batch: number;
  prefix?: number;
  depth: number;
  offsets: Int32Array; // (B + 1)
  rectOfRow: Int32Array; // (A) or more
  rectExit: Int32Array; // (A - B prefix) or more
  rowsBound?: number; // default A; at least A
}
export interface CudaTokenExitMarkParams {
  rows: number; // upper bound when rowsDevice is set
  layer: number;
  halt: Uint8Array; // (rows)
  rectOfRow: Int32Array; // (rows)
  rectExit: Int32Array; // (rects) in and out
  rowsDevice?: number; // the real row count, read on the device
}
export interface CudaTokenGatherParams {
  rows: number; // upper bound when rowsDevice is set
  srcRow: Int32Array; // (rows)
  in: Int32Array;
  out: Int32Array; // (rows)
  rowsDevice?: number; // the real row count, read on the device
}
export interface CudaTokenPackParams {
  batch: number;
  prefix?: number;
  counts: Int32Array; // (B)
  gridOffset: Int32Array; // (B)
  stage: Int32Array; // (rects, 4)
  rects: Int32Array; // (sum of counts, 4) or more
  offsets: Int32Array; // (B + 1)
  rectCount: Int32Array; // (1)
}
export interface CudaUpsampleParams {
  K: number;
  gh: number;
  gw: number;
  patch: number;
  logits: Float32Array; // (gh, gw, K)
  validH: number;
  validW: number;
  outH: number;
  outW: number;
  labels: Int32Array; // (outH, outW)
  probs?: Float32Array; // (K, outH, outW)
}
export interface CudaConvParams {
  batch: number;
  inH: number;
  inW: number;
  inC: number;
  outC: number;
  kernel: number;
  stride: number;
  pad: number;
  groups?: number; // 1 or inC (depthwise)
  act?: 'none' | 'relu6';
  x: Float32Array; // (B, inH, inW, inC)
  w: Float32Array; // (outC, inC / groups, k, k)
  bias?: Float32Array; // (outC)
  y: Float32Array; // (B, outH, outW, outC)
}
export interface CudaAvgPoolParams {
  inH: number;
  inW: number;
  C: number;
  factor: number;
  outH?: number;
  outW?: number;
  x: Float32Array; // (inH, inW, C)
  y: Float32Array; // (outH, outW, C)
}

export interface CudaOpParams {
  gemm: CudaGemmParams;
  attention: CudaAttentionParams;
  layernorm: CudaLayerNormParams;
  convertToBf16: { x: Float32Array; y: Uint16Array };
  imageNormalize: CudaImageNormalizeParams;
  patchGather: CudaPatchGatherParams;
  tokenPosEmbed: CudaTokenPosEmbedParams;
  windowScore: CudaWindowScoreParams;
  superpatchSelect: CudaSuperpatchSelectParams;
  unshare: CudaUnshareParams;
  tokenHalt: CudaTokenHaltParams;
  tokenCompact: CudaTokenCompactParams;
  tokenScatter: CudaTokenScatterParams;
  tokenRowsInit: CudaTokenRowsInitParams;
  tokenExitMark: CudaTokenExitMarkParams;
  tokenGather: CudaTokenGatherParams;
  tokenPack: CudaTokenPackParams;
  upsample: CudaUpsampleParams;
  conv: CudaConvParams;
  avgPool: CudaAvgPoolParams;
}

export interface CudaOps {
  gemm(p: CudaGemmParams): void;
  attention(p: CudaAttentionParams): void;
  layernorm(p: CudaLayerNormParams): void;
  convertToBf16(p: { x: Float32Array; y: Uint16Array }): void;
  imageNormalize(p: CudaImageNormalizeParams): void;
  patchGather(p: CudaPatchGatherParams): void;
  tokenPosEmbed(p: CudaTokenPosEmbedParams): void;
  windowScore(p: CudaWindowScoreParams): void;
  superpatchSelect(p: CudaSuperpatchSelectParams): void;
  unshare(p: CudaUnshareParams): void;
  tokenHalt(p: CudaTokenHaltParams): void;
  tokenCompact(p: CudaTokenCompactParams): void;
  tokenScatter(p: CudaTokenScatterParams): void;
  tokenRowsInit(p: CudaTokenRowsInitParams): void;
  tokenExitMark(p: CudaTokenExitMarkParams): void;
  tokenGather(p: CudaTokenGatherParams): void;
  tokenPack(p: CudaTokenPackParams): void;
  upsample(p: CudaUpsampleParams): void;
  conv(p: CudaConvParams): void;
  avgPool(p: CudaAvgPoolParams): void;
  /** Median ms of `iterations` runs (after 2 warm-ups), enqueued back to back, timed with CUDA events. */
  time<K extends keyof CudaOpParams>(name: K, params: CudaOpParams[K], iterations: number): number;
  chooseGemm(M: number, N: number, K: number, aligned?: boolean): Exclude<GemmKernelName, 'auto'>;
  chooseAttention(D: number, aligned?: boolean): Exclude<AttentionKernelName, 'auto'>;
  chooseLayernorm(C: number, aligned?: boolean): Exclude<LayerNormKernelName, 'auto'>;
  /** The CPU image_normalize on the same params (the bit-identity reference). */
  cpuImageNormalize(p: CudaImageNormalizeParams): void;
}

/** `cudaOps` when this binary has them and cudaStatus() finds a usable GPU; else why not. */
export async function findCudaOps(): Promise<{ ops: CudaOps; device: string } | { reason: string }> {
  const { binding, file } = loadBinding();
  const status = await cudaStatus();
  if (!status.compiled || !status.usable) return { reason: status.reason };
  const ops = (binding as unknown as { cudaOps?: CudaOps }).cudaOps;
  if (!ops) return { reason: `${file} has the CUDA backend but no cudaOps (built before native/addon/cuda_binding.cpp)` };
  return { ops, device: `${status.name} (sm_${status.computeCapability}, driver ${status.driverVersion})` };
}

/** True when the loaded binary is the CUDA emulator build (npm run build:emu): CUDA runs on the CPU, slowly. */
export function onEmulator(): boolean {
  return (loadBinding().binding.cpuInfo() as { cuda?: string }).cuda === 'cuda (emulated)';
}

/** STEP_SEG_REQUIRE_CUDA=1 (set by scripts/gpu-check.sh): a missing GPU is a failure, not a skip. */
export const cudaRequired = !!process.env.STEP_SEG_REQUIRE_CUDA && process.env.STEP_SEG_REQUIRE_CUDA !== '0';
