// layernorm's case table for the CUDA kernels against the CPU op: widths vec runs (C % 128 == 0,
// C <= 1024) and only simple runs, and rows on the device (none, some, all, past the bound).
import type { Big } from './sizes';

/** CUDA: widths (seeds 6000 + i); rows 37 but at C = 384 (a whole ViT-S image). */
export const kLayernormCudaWidths = [70, 128, 384, 768, 1024, 1152];
export const layernormCudaRows = (C: number, big: Big): number => (C === 384 ? big(1025, 129) : 37);
/** CUDA: rows on the device under a bound of 64. */
export const kLayernormDeviceWidths = [384, 70];
export const kLayernormDeviceBound = 64;
export const kLayernormDeviceRows = [0, 37, 64, 64 + 9];
