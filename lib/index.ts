/// <reference types="node" preserve="true" />
// The declarations name Node's types (Buffer, Symbol.asyncDispose): the directive above makes a
// consumer's TypeScript load @types/node even where its tsconfig lists no `types` (TypeScript 7's
// default), so `tsc --strict` on a consumer checks clean.
/**
 * step-seg: Vision-Transformer semantic segmentation of large images from Node, on a native engine
 * (CPU, with a CUDA backend compiled in where built with nvcc).
 */
export { loadModel, Model, cudaStatus, defaultModelPath } from './model';
export type { CudaStatus } from './model';
export type { SegmentResult, SegmentStats, StageTimes, StageName, FeaturesResult } from './model';
export type { CudaProbe, CudaBuild } from './binding';
export type { ModelConfig, MergeConfig, PruneConfig } from './config';
export type { ImageInput, RawImage } from './image';
export type { Device, LoadOptions, Precision, SegmentOptions, ForwardOptions } from './options';
export type { Tensor, DType } from './tensor';
export {
  StepError,
  BadInputError,
  BadModelError,
  DeviceUnavailableError,
  OutOfMemoryError,
  DisposedError,
  InternalError,
} from './errors';
export type { StepErrorCode } from './errors';
export { encodeSafetensors } from './safetensors';
export { colorize } from './palette';
export { overlay, tokenPicture, exitColor } from './pictures';
export type { OverlayOptions, TokenPictureOptions, TokenMap } from './pictures';

import { type Bf16Kernel, type CudaBuild, loadBinding } from './binding';
import { defaultPrecision, type Precision } from './options';

/**
 * Which native binary is loaded (`binary`, and `build`: `'binding.gyp'` for the CPU-only fallback that
 * `npm install` compiles, `'cmake-js'` for `npm run build:native` and the prebuilt binary), the CPU
 * engine's settings (`threads`, `gemmKernel`: `'avx512'`, `'avx2'` or `'generic'`; `bf16Kernel`:
 * `'avx512bf16'` where the CPU has AVX512_BF16, else `'none'` and `precision: 'bf16'` runs float32;
 * `defaultPrecision`: what `loadModel` uses without a `precision`), and which CUDA
 * backend the binary carries (`cuda`: `'cuda'`, `'cuda (emulated)'` for the test-only emulator build,
 * or `'none'`).
 */
export function runtimeInfo(): {
  binary: string;
  build?: 'binding.gyp' | 'cmake-js';
  threads: number;
  gemmKernel: string;
  bf16Kernel: Bf16Kernel;
  defaultPrecision: Precision;
  cuda: CudaBuild;
} {
  const { binding, file } = loadBinding();
  return { binary: file, ...binding.cpuInfo(), defaultPrecision: defaultPrecision() as Precision };
}
