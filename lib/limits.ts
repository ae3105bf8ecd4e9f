/**
 * What the engine supports, checked in JavaScript before any value crosses into C++ (where sizes are
 * 32-bit integers and float32s) and before anything is allocated. README: *Limits*.
 */
export const kLimits = {
  /** options.size and config input_size: the long side inference runs at (and options.tile.size) */
  size: 8192,
  /** options.size with tiles, and options.outputSize: the long side of the resized image / label map */
  tiledSize: 65536,
  /** patch_size */
  patchSize: 256,
  /** embed_dim */
  embedDim: 16384,
  /** depth: tokenMap.exitLayer holds block counts in a Uint8Array */
  depth: 255,
  /** embed_dim * mlp_ratio */
  mlpHidden: 131072,
  /** reg_tokens */
  regTokens: 256,
  /** each side of img_size, in pixels */
  imgSide: 32768,
  /** num_classes (labels are a Uint16Array above 256) */
  numClasses: 65536,
  /** keep_top_k / keepTopK: int32 */
  keepTopK: 2 ** 31 - 1,
  /** tokens of one forward (all images of a batch): row indices are int32 */
  tokens: 2 ** 24,
  /** forwardFeatures: N, and each of H and W */
  batch: 4096,
  featuresSide: 65536,
} as const;

/** True for a number whose float32 form is finite and, when `positive`, above 0 (a float32 normal). */
export function float32Ok(v: unknown, positive = false): v is number {
  if (typeof v !== 'number' || !Number.isFinite(v)) return false;
  const f = Math.fround(v);
  return Number.isFinite(f) && (!positive || f >= 1.1754943508222875e-38);
}
