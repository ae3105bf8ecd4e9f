// The case table of conv (the stem, depthwise 3 x 3 and 5 x 5 at stride 1 and 2, one pixel, dense) and
// avg_pool (factors that divide and do not divide the size, factor 1, one output pixel).

export type ConvCase = [batch: number, inH: number, inW: number, inC: number, outC: number, kernel: number, stride: number,
  groups: number, act: 'none' | 'relu6', bias: boolean];
export const kConvCases: ConvCase[] = [
  [1, 224, 224, 3, 32, 3, 2, 1, 'relu6', true], // the stem
  [2, 37, 53, 3, 32, 3, 2, 1, 'relu6', true], // odd sizes, two images
  [2, 28, 28, 40, 40, 3, 1, 40, 'relu6', true],
  [1, 29, 31, 24, 24, 5, 2, 24, 'relu6', true],
  [1, 14, 14, 112, 112, 5, 1, 112, 'none', false],
  [1, 1, 1, 8, 8, 3, 1, 8, 'relu6', true], // one pixel: only the centre tap
  [1, 9, 7, 5, 7, 3, 1, 1, 'none', false], // dense, stride 1, no bias
];

/** avg_pool: [inH, inW, C, factor]. */
export const kAvgPoolCases = [[16, 24, 1280, 2], [17, 25, 64, 4], [7, 7, 3, 1], [8, 8, 5, 8]];
