/**
 * The typed seam to the native addon: everything the `.node` file exports is declared here, and this
 * is the only module that loads it. node-gyp-build picks `build/Release` (a local build) when there
 * is one, else `prebuilds/<platform>-<arch>/` (the binary shipped in the npm package, which has no
 * build folder); `STEP_SEG_BINARY` names a file to load instead.
 */
import * as path from 'node:path';

import { InternalError } from './errors';

export interface NativeConfig {
  arch: 'vit' | 'efficientnet_lite0';
  patchSize: number;
  embedDim: number;
  depth: number;
  numHeads: number;
  mlpHidden: number;
  qkvBias: boolean;
  classToken: boolean;
  regTokens: number;
  noEmbedClass: boolean;
  preNorm: boolean;
  layerScale: boolean;
  normEps: number;
  gridH: number;
  gridW: number;
  numClasses: number;
  exitLayers: number[];
  policyLevels: number[];
  policyOutputs: number;
  policyPool: number;
  policyFeature: number;
}

export interface NativeTensorEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

export interface NativeStats {
  denseTokens: number;
  inputTokens: number;
  perBlock: number[];
  halted: number[];
  gflops: number;
  /** the dense forward over the same images (native/core/cost.h) */
  gflopsDense: number;
  ms: Record<string, number>;
}

export interface NativeSegmentImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
  outWidth: number;
  outHeight: number;
  /** Result arrays, allocated by the caller and filled by the addon: labels (out pixels), probs (K x out pixels),
   * logits (K x gh x gw), and the token map (gh x gw each). */
  labels: Uint8Array | Uint16Array;
  probs?: Float32Array;
  logits?: Float32Array;
  index: Int32Array;
  size: Uint8Array;
  exitLayer: Uint8Array;
}

export interface NativeSegmentResult {
  tokensPerSize: number[];
  stats: NativeStats & { batchDenseTokens: number; batchInputTokens: number; gflopsPolicy: number; tiles: number };
}

/** What planSegment() is asked: the resized images and label maps, tiles, and what runs and returns. */
export interface NativeSegmentPlanRequest {
  images: { width: number; height: number; outWidth: number; outHeight: number }[];
  tile?: { size: number; stride: number };
  /** the learned merge policy's CNN runs (merging on, policy 'learned') */
  learnedPolicy: boolean;
  probs: boolean;
  logits: boolean;
}

/** A segment() call's layout and bytes (native/core/layout.h, SegmentPlan). */
export interface NativeSegmentPlan {
  /** the most tokens of one forward (patches + prefix tokens, before merging) */
  tokens: number;
  /** forward: the largest forward's peak (one forward runs at a time; tiled: with the tile's crop); results: every image's arrays */
  bytes: { forward: number; results: number };
  /** untiled: one forward over the batch; tiled: one per image, `count` its tiles (they share one grid) */
  forwards: { tokens: number; bytes: number; count: number }[];
  /** per image: its patch grid, its tiles (1 untiled), its result bytes (tiled: with the running sums' weights) */
  images: { gh: number; gw: number; tiles: number; bytes: number }[];
}

export interface NativeModel {
  /** What the CPU side runs: 'bf16' only where it was asked for and the CPU has a bfloat16 kernel. */
  readonly precision: 'fp32' | 'bf16';
  forwardFeatures(
    pixels: Float32Array,
    dims: readonly number[],
    capture: boolean,
  ): Promise<{
    tokens: Float32Array;
    captured: Record<string, Float32Array>;
    stages?: { data: Float32Array; dims: number[] }[];
    stats: NativeStats;
  }>;
  segment(
    images: NativeSegmentImage[],
    options: {
      mean: number[];
      std: number[];
      probs: boolean;
      logits: boolean;
      merge?: { policy: string; levels: number[]; thresholds: number[]; colorTau: number; textureTau: number };
      prune?: { exitLayers: number[]; threshold: number; keepTopK: number };
      tile?: { size: number; stride: number };
    },
  ): Promise<NativeSegmentResult[]>;
  /** A segment() call's layout and bytes, at once (ViT segmentation models). */
  planSegment(request: NativeSegmentPlanRequest): NativeSegmentPlan;
  /** forwardFeatures' tokens and bytes for pixels of `dims` [N, 3, H, W] (a bare trunk: its pixels count as tokens). */
  planFeatures(dims: readonly number[], capture: boolean): { tokens: number; bytes: { forward: number; results: number } };
  dispose(): void;
  /** The position-embedding cache (tests and diagnostics). */
  cacheInfo(): { posEntries?: number; posBytes?: number; posLimit?: number };
}

/** The CUDA backend compiled into the binary: the GPU one, the CPU emulator's (tests only), or none. */
export type CudaBuild = 'cuda' | 'cuda (emulated)' | 'none';

/** What `cudaStatus()` found. */
export interface CudaProbe {
  /** The CUDA backend is compiled into the loaded binary. */
  compiled: boolean;
  /** A GPU this binary can run on is there (driver new enough, code for its architecture). */
  usable: boolean;
  /** Why not, when not usable (empty when usable). */
  reason: string;
  /** The GPU's name (device 0), empty without one. */
  name: string;
  /** CUDA versions as the runtime reports them, e.g. 13000 for 13.0; 0 when unknown. */
  driverVersion: number;
  runtimeVersion: number;
  deviceCount: number;
  /** e.g. 90 for compute capability 9.0; 0 without a GPU. */
  computeCapability: number;
  /** True in the emulator build (npm run build:emu): the CUDA backend runs on the CPU, for tests only. */
  emulated: boolean;
}

export type Bf16Kernel = 'avx512bf16' | 'bf16-generic' | 'none';

export interface Binding {
  createModel(
    config: NativeConfig,
    tensors: NativeTensorEntry[],
    source: string | Buffer,
    dataOffset: number,
    device: 'cpu' | 'cuda',
    /** A path source: the bytes its header was parsed from and the file's size then (checked again on load). */
    header?: Uint8Array,
    fileSize?: number,
    /** The CPU's GEMM and attention arithmetic (default fp32). */
    precision?: 'fp32' | 'bf16',
  ): Promise<NativeModel>;
  probeCuda(): Promise<CudaProbe>;
  /** `build`: the build system that made the binary (absent from binaries built before it was added). */
  /**
   * `bf16Kernel`: the bfloat16 GEMM kernel (`'avx512bf16'`; `'bf16-generic'` only when
   * STEP_SEG_BF16_KERNEL=generic forces the portable twin), or `'none'`: bf16 requests run float32.
   */
  cpuInfo(): { threads: number; gemmKernel: string; bf16Kernel: Bf16Kernel; build?: 'binding.gyp' | 'cmake-js'; cuda: CudaBuild };
  setNumThreads(n: number): void;
  /** A copy of a typed array's bytes in memory the addon maps (large views only; undefined: copy in JS). */
  capture(view: ArrayBufferView): ArrayBuffer | undefined;
  /** RGBA -> RGB in place on a libuv worker thread: the first 3 * pixels bytes of `rgba` become RGB. */
  dropAlpha(rgba: Uint8Array, pixels: number): Promise<void>;
  /** Process-wide memory reservations of calls in flight (lib/memory.ts). */
  memoryReserve(bytes: number, limit: number): boolean;
  memoryRelease(bytes: number): void;
  memoryReserved(): number;
  ops: Record<string, (params: Record<string, unknown>) => void>;
  /** Present when the CUDA backend is compiled in: single CUDA ops for the tests and the benchmark (typed in lib/cuda-ops.ts). */
  cudaOps?: Record<string, (...args: unknown[]) => unknown>;
}

/** Package root: lib/ compiles to dist/, both one level below it. */
export const packageRoot = path.resolve(__dirname, '..');

let cached: { binding: Binding; file: string } | undefined;

/** Loads the addon once; throws an Error that lists the likely causes and fixes when none loads. */
export function loadBinding(): { binding: Binding; file: string } {
  if (cached) return cached;
  const failures: string[] = [];
  let file: string | undefined = process.env.STEP_SEG_BINARY ? path.resolve(process.env.STEP_SEG_BINARY) : undefined;
  if (!file) {
    try {
      // node-gyp-build: build/Release/*.node, else prebuilds/<platform>-<arch>/*.node matching the
      // N-API and libc tags.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      file = (require('node-gyp-build') as { resolve(dir: string): string }).resolve(packageRoot);
    } catch (err) {
      failures.push((err as Error).message.split('\n')[0]);
    }
  }
  if (file) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      cached = { binding: require(file) as Binding, file };
      return cached;
    } catch (err) {
      failures.push(`${file}: ${(err as Error).message}`);
    }
  }
  throw new InternalError(
    [
      `step-seg: no native binary could be loaded for ${process.platform}-${process.arch} (Node ${process.version}).`,
      ...failures.map((f) => '  ' + f),
      'Likely causes and fixes:',
      '  - No prebuilt binary for this platform: build one with `npm rebuild step-seg` (needs a C++17',
      '    compiler, python3 and make), or `npm run build:native` in a clone (cmake-js, CUDA when nvcc exists).',
      '  - Installed with --ignore-scripts where no prebuilt binary fits: run `npm rebuild step-seg`.',
      '  - node_modules copied from another platform or libc (Docker layers, Alpine vs glibc): reinstall.',
      '  - STEP_SEG_BINARY points at a file that is missing or was built for another platform.',
    ].join('\n'),
  );
}
