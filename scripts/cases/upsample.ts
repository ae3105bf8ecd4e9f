// upsample's case table: the CPU op against a double-precision reference and its labels-only path
// against the per-pixel one (patch 16), and the CUDA kernel against the CPU op: up to the original
// size, down, one class, one patch, many classes at a large odd size.

/** CPU: [gh, gw, K, validH, validW, outH, outW], patch 16; the reference test takes the first three. */
export const kUpsampleCpuCases = [
  [3, 4, 5, 40, 60, 97, 133], // grid covers 48 x 64 padded pixels, 40 x 60 of them image
  [1, 1, 2, 16, 16, 5, 7],
  [2, 5, 300, 32, 70, 16, 35], // downsampling, over 256 classes
  [12, 20, 11, 180, 310, 900, 1550],
];

export type UpsampleCase = [K: number, gh: number, gw: number, patch: number, validH: number, validW: number, outH: number,
  outW: number, withProbs: boolean];
export const kUpsampleCudaCases: UpsampleCase[] = [
  [19, 7, 10, 16, 100, 150, 333, 500, true], // upsampling to the original size
  [3, 4, 4, 16, 64, 64, 32, 32, true], // downsampling
  [1, 3, 5, 14, 37, 61, 37, 61, true], // one class: label 0, prob 1
  [21, 1, 1, 16, 9, 5, 9, 5, false], // a single patch
  [150, 32, 32, 16, 512, 512, 257, 1023, false],
];
