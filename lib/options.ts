/** Option checking for the public API, in one place, with errors of one shape. */
import { checkMerge, checkPrune, kDefaultMerge, type MergeConfig, type PruneConfig } from './config';
import { BadInputError, invalidParameter } from './errors';
import { kLimits } from './limits';

export type Device = 'auto' | 'cpu' | 'cuda';

export type Precision = 'fp32' | 'bf16';

/**
 * The CPU's arithmetic when no `precision` is given (the `STEP_SEG_PRECISION` environment variable
 * overrides it): bf16, which runs where the CPU has AVX512_BF16 and is float32 elsewhere. Chosen on
 * the bundled model's CamVid val mIoU, bf16 within 0.1 of float32 (README, *CPU precision*).
 */
export const kDefaultPrecision: Precision = 'bf16';

/** What loadModel uses without a `precision`: STEP_SEG_PRECISION where set, else kDefaultPrecision. */
export function defaultPrecision(): string {
  return process.env.STEP_SEG_PRECISION || kDefaultPrecision;
}

export interface LoadOptions {
  /** `'auto'` (default): the GPU when usable, else the CPU; `'cpu'`; `'cuda'`: the GPU or a rejection. */
  device?: Device;
  /**
   * The CPU's matrix products (the GEMMs and attention): `'bf16'` (default): bfloat16 operands with
   * float32 accumulation, about twice as fast where the CPU has AVX512_BF16 (the CUDA backend's
   * numerics), float32 on a CPU without it (`model.precision` says what runs); or `'fp32'`. The CUDA
   * backend always runs bf16.
   */
  precision?: Precision;
}

export interface SegmentOptions {
  /** Long side, in pixels, the image is resized to before inference. Default: the model's `input_size`. */
  size?: number;
  /** Also return per-class probabilities at the output size, `(K, height, width)`. Default false. */
  probabilities?: boolean;
  /** Also return the low-resolution patch-grid logits, `(K, gh, gw)`. Default false. */
  logits?: boolean;
  /**
   * Superpatch merging: `false` for none (the dense model), or fields over the model's defaults:
   * `policy` ('similarity' | 'learned'), `levels` (window sides in patches, largest first),
   * `thresholds` (one per level), `colorTau`, `textureTau`, `unshare` ('copy' | 'blend'). Default: the
   * model's config.
   */
  merge?: false | Partial<MergeConfig>;
  /**
   * Early pruning at the model's exit heads: `false` for none, or fields over the model's defaults:
   * `threshold` (confidence to halt), `keepTopK` (context tokens kept per class), `exitLayers`
   * (a subset of the model's exits), `agree` (halting needs the neighbours' label). Default: the
   * model's config (off for models without exit heads).
   */
  prune?: false | Partial<PruneConfig>;
  /**
   * Sliding-window inference (mmsegmentation's slide mode): the image, resized so that its long side
   * is `size` (default with tiles: the image's own, i.e. full resolution), is run as tiles of
   * `size` x `size` pixels overlapping by `overlap` pixels (default a quarter of the tile; the last
   * tile of a row or column ends at the image's edge), one tile per forward, and the patch-grid logits
   * are averaged where tiles overlap. Memory follows the tile, not the image. Sizes are multiples of
   * the patch size.
   */
  tile?: { size: number; overlap?: number };
  /** Long side of the label map (and probabilities). Default: the image's own size. */
  outputSize?: number;
}

export interface ForwardOptions {
  /** Also return `patch_embed`, `tokens_0`, `block_N` and `final_norm`. Default false. */
  intermediates?: boolean;
}

function checkKeys(options: object, allowed: readonly string[], name: string): void {
  for (const key of Object.keys(options))
    if (!allowed.includes(key)) throw invalidParameter(`${name}.${key}`, `one of the known options (${allowed.join(', ')})`, key);
}

function checkObject(options: unknown, name: string): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw invalidParameter(name, 'an object', options);
  return options as Record<string, unknown>;
}

function checkBool(v: unknown, name: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw invalidParameter(name, 'a boolean', v);
  return v;
}

export function checkLoadOptions(options: unknown): Required<LoadOptions> {
  const o = checkObject(options, 'options');
  checkKeys(o, ['device', 'precision'], 'options');
  const device = o.device ?? process.env.STEP_SEG_DEVICE ?? 'auto';
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') throw invalidParameter('options.device', "'auto', 'cpu' or 'cuda'", device);
  const precision = o.precision ?? defaultPrecision();
  if (precision !== 'fp32' && precision !== 'bf16')
    throw invalidParameter(o.precision === undefined ? 'STEP_SEG_PRECISION' : 'options.precision', "'fp32' or 'bf16'", precision);
  return { device, precision };
}

export const kMaxSize = kLimits.size;

export interface CheckedSegmentOptions {
  /** undefined: the image's own long side (tiles only) */
  size: number | undefined;
  /** tile side and stride in pixels, multiples of the patch size */
  tile: { size: number; stride: number } | false;
  outputSize: number | undefined;
  probabilities: boolean;
  logits: boolean;
  merge: MergeConfig | false;
  prune: PruneConfig | false;
}

/**
 * The levels of `merge` whose windows reach no further across an image resized to a long side of `size`
 * than the largest level does at the model's `inputSize` (S * inputSize <= max(levels) * size), with
 * their thresholds; false when none remain. At `size` >= `inputSize` every level stays.
 */
export function reachLevels(merge: MergeConfig, size: number, inputSize: number): MergeConfig | false {
  const largest = Math.max(...merge.levels);
  const keep = merge.levels.map((S) => S * inputSize <= largest * size);
  if (keep.every(Boolean)) return merge;
  if (!keep.some(Boolean)) return false;
  return { ...merge, levels: merge.levels.filter((_, i) => keep[i]), thresholds: merge.thresholds.filter((_, i) => keep[i]) };
}

export function checkSegmentOptions(
  options: unknown,
  defaults: {
    size: number;
    patch: number;
    merge: MergeConfig | false;
    policy: { levels: number[] } | false;
    prune: PruneConfig | false;
  },
): CheckedSegmentOptions {
  const o = checkObject(options, 'options');
  checkKeys(o, ['size', 'probabilities', 'logits', 'merge', 'prune', 'tile', 'outputSize'], 'options');
  const P = defaults.patch;
  let tile: CheckedSegmentOptions['tile'] = false;
  if (o.tile !== undefined) {
    const t = o.tile as Record<string, unknown>;
    if (t === null || typeof t !== 'object' || Array.isArray(t)) throw invalidParameter('options.tile', '{ size, overlap? } in pixels', o.tile);
    checkKeys(t, ['size', 'overlap'], 'options.tile');
    const side = t.size;
    if (!Number.isInteger(side) || (side as number) < P || (side as number) > kMaxSize || (side as number) % P)
      throw invalidParameter('options.tile.size', `a multiple of the patch size ${P} from ${P} to ${kMaxSize}`, side);
    const overlap = t.overlap ?? Math.floor((side as number) / 4 / P) * P;
    if (!Number.isInteger(overlap) || (overlap as number) < 0 || (overlap as number) >= (side as number))
      throw invalidParameter('options.tile.overlap', `an integer from 0 to ${(side as number) - 1} (pixels)`, overlap);
    // the stride between tiles, a whole number of patches: the overlap rounds up to one
    const stride = Math.max(P, Math.floor(((side as number) - (overlap as number)) / P) * P);
    tile = { size: side as number, stride };
  }
  const maxSize = tile ? kLimits.tiledSize : kMaxSize;
  const size = o.size ?? (tile ? undefined : defaults.size);
  if (size !== undefined && (!Number.isInteger(size) || (size as number) < P || (size as number) > maxSize))
    throw invalidParameter('options.size', `an integer from ${P} to ${maxSize}`, size);
  const outputSize = o.outputSize;
  if (outputSize !== undefined && (!Number.isInteger(outputSize) || (outputSize as number) < 1 || (outputSize as number) > kLimits.tiledSize))
    throw invalidParameter('options.outputSize', `an integer from 1 to ${kLimits.tiledSize}`, outputSize);
  let merge = defaults.merge;
  if (o.merge === false) merge = false;
  else if (o.merge !== undefined) {
    const m = checkObject(o.merge, 'options.merge');
    checkKeys(m, ['policy', 'levels', 'thresholds', 'colorTau', 'textureTau', 'unshare'], 'options.merge');
    if ((m.policy ?? (defaults.merge || kDefaultMerge).policy) === 'learned' && !defaults.policy)
      throw new BadInputError(
        "options.merge.policy 'learned': this model carries no learned merge policy (its weights have no policy.* tensors). " +
          "Use policy 'similarity' (the training-free scorer, the default) or merge: false, or load a model trained with a policy (scripts/train_policy.py)",
      );
    // fields not given come from the model's merge config, or the defaults where it turns merging off
    merge = checkMerge(m, defaults.merge || kDefaultMerge, (field, expected, value) => {
      throw invalidParameter(`options.merge.${field}`, expected, value);
    });
    if (merge.policy === 'learned' && defaults.policy) {
      const heads = defaults.policy.levels;
      if (!merge.levels.every((side) => heads.includes(side)))
        throw invalidParameter('options.merge.levels', `levels among the policy's heads [${heads.join(', ')}]`, merge.levels);
    }
  }
  // Superpatch reach: the model's ViT met superpatches of its levels at its input size; on an image
  // resized smaller, a window of the same patches spans more of the scene than any it was trained on
  // (measured: the top third of the rocket photo at 320 px went from 70% to 39% sky with 4 x 4 windows). Levels the
  // call does not name are kept only while S * inputSize <= (largest level) * size; levels given in
  // options.merge.levels are used as given.
  const namedLevels = merge && o.merge !== undefined && (o.merge as Record<string, unknown>).levels !== undefined;
  if (merge && !namedLevels && size !== undefined) merge = reachLevels(merge, size as number, defaults.size);
  let prune = defaults.prune;
  if (o.prune === false) prune = false;
  else if (o.prune !== undefined) {
    const p = checkObject(o.prune, 'options.prune');
    checkKeys(p, ['threshold', 'keepTopK', 'exitLayers', 'agree'], 'options.prune');
    if (!defaults.prune) throw invalidParameter('options.prune', 'false: this model has no exit heads', o.prune);
    prune = checkPrune(p, defaults.prune, (field, expected, value) => {
      throw invalidParameter(`options.prune.${field}`, expected, value);
    });
  }
  return {
    size: size as number | undefined,
    tile,
    outputSize: outputSize as number | undefined,
    probabilities: checkBool(o.probabilities, 'options.probabilities'),
    logits: checkBool(o.logits, 'options.logits'),
    merge,
    prune,
  };
}

export function checkForwardOptions(options: unknown): Required<ForwardOptions> {
  const o = checkObject(options, 'options');
  checkKeys(o, ['intermediates'], 'options');
  return { intermediates: checkBool(o.intermediates, 'options.intermediates') };
}
