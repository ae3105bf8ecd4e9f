// The case table of the elementwise ops: convert_to_bf16 (every length mod 4, special values) and
// image_normalize (3 and 4 channels, with and without padding, one pixel; planar and channels last).

/** convert_to_bf16: +-0, +-inf, +-max float (rounds to inf), subnormals, ties to even, just above a tie, carry. */
export const kBf16Specials = Uint32Array.from([
  0x00000000, 0x80000000, 0x7f800000, 0xff800000, // +-0, +-inf
  0x7f7fffff, 0xff7fffff, // +-max float: rounds to inf
  0x00000001, 0x007fffff, 0x80400000, // subnormals
  0x3f808000, 0x3f818000, 0x3f808001, 0x3f80ffff, // ties to even (down, up), just above a tie, carry
]);
export const kBf16Lengths = [1, 2, 3, 4, 5, 1027, 4096 + 2];

/** image_normalize: [h, w, channels, outH, outW, channelsLast]. */
export const kImageNormalizeCases = [
  [37, 53, 3, 48, 64, false], [37, 53, 4, 48, 64, false], [32, 48, 3, 32, 48, false], [1, 1, 4, 16, 16, false],
  [37, 53, 3, 48, 64, true], [37, 53, 4, 48, 64, true], [32, 48, 3, 32, 48, true], [1, 1, 4, 16, 16, true],
] as const;
export const kImagenetMean = [0.485, 0.456, 0.406].map((v) => 255 * v);
export const kImagenetStd = [0.229, 0.224, 0.225].map((v) => 255 * v);
