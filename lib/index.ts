/**
 * step-seg: Vision-Transformer semantic segmentation of large images from Node, on a native engine
 * (CPU, with a CUDA backend compiled in where built with nvcc).
 */
export { loadModel, Model, cudaStatus, defaultModelPath } from './model';
export type { CudaStatus } from './model';
export type { SegmentResult, SegmentStats, FeaturesResult } from './model';
export type { ModelConfig } from './config';
export type { ImageInput, RawImage } from './image';
export type { Device, LoadOptions, SegmentOptions, ForwardOptions } from './options';
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

import { type CudaBuild, loadBinding } from './binding';

/**
 * Which native binary is loaded, the CPU engine's settings, and which CUDA backend the binary carries
 * (`'cuda'`, `'cuda (emulated)'` for the test-only emulator build, or `'none'`).
 */
export function runtimeInfo(): { binary: string; threads: number; gemmKernel: string; cuda: CudaBuild } {
  const { binding, file } = loadBinding();
  return { binary: file, ...binding.cpuInfo() };
}
