// upsample's case table for the CUDA kernel against the CPU op: up to the original size, down, one
// class, one patch, many classes at a large odd size.

export type UpsampleCase = [K: number, gh: number, gw: number, patch: number, validH: number, validW: number, outH: number,
  outW: number, withProbs: boolean];
export const kUpsampleCudaCases: UpsampleCase[] = [
  [19, 7, 10, 16, 100, 150, 333, 500, true], // upsampling to the original size
  [3, 4, 4, 16, 64, 64, 32, 32, true], // downsampling
  [1, 3, 5, 14, 37, 61, 37, 61, true], // one class: label 0, prob 1
  [21, 1, 1, 16, 9, 5, 9, 5, false], // a single patch
  [150, 32, 32, 16, 512, 512, 257, 1023, false],
];
