/** Option checking for the public API, in one place, with errors of one shape. */
import { checkMerge, checkPrune, kDefaultMerge, type MergeConfig, type PruneConfig } from './config';
import { invalidParameter } from './errors';
import { kLimits } from './limits';

export type Device = 'auto' | 'cpu' | 'cuda';

export interface LoadOptions {
  /** `'auto'` (default): the GPU when usable, else the CPU; `'cpu'`; `'cuda'`: the GPU or a rejection. */
  device?: Device;
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
   * `thresholds` (one per level), `colorTau`, `textureTau`. Default: the model's config.
   */
  merge?: false | Partial<MergeConfig>;
  /**
   * Early pruning at the model's exit heads: `false` for none, or fields over the model's defaults:
   * `threshold` (confidence to halt), `keepTopK` (context tokens kept per class), `exitLayers`
   * (a subset of the model's exits). Default: the model's config (off for models without exit heads).
   */
  prune?: false | Partial<PruneConfig>;
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
  checkKeys(o, ['device'], 'options');
  const device = o.device ?? process.env.STEP_SEG_DEVICE ?? 'auto';
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') throw invalidParameter('options.device', "'auto', 'cpu' or 'cuda'", device);
  return { device };
}

export const kMaxSize = kLimits.size;

export interface CheckedSegmentOptions {
  size: number;
  probabilities: boolean;
  logits: boolean;
  merge: MergeConfig | false;
  prune: PruneConfig | false;
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
  checkKeys(o, ['size', 'probabilities', 'logits', 'merge', 'prune'], 'options');
  const size = o.size ?? defaults.size;
  if (!Number.isInteger(size) || (size as number) < defaults.patch || (size as number) > kMaxSize)
    throw invalidParameter('options.size', `an integer from ${defaults.patch} to ${kMaxSize}`, size);
  let merge = defaults.merge;
  if (o.merge === false) merge = false;
  else if (o.merge !== undefined) {
    const m = checkObject(o.merge, 'options.merge');
    checkKeys(m, ['policy', 'levels', 'thresholds', 'colorTau', 'textureTau'], 'options.merge');
    // fields not given come from the model's merge config, or the defaults where it turns merging off
    merge = checkMerge(m, defaults.merge || kDefaultMerge, (field, expected, value) => {
      throw invalidParameter(`options.merge.${field}`, expected, value);
    });
    if (merge.policy === 'learned') {
      if (!defaults.policy) throw invalidParameter('options.merge.policy', "'similarity': this model has no learned policy", 'learned');
      const heads = defaults.policy.levels;
      if (!merge.levels.every((side) => heads.includes(side)))
        throw invalidParameter('options.merge.levels', `levels among the policy's heads [${heads.join(', ')}]`, merge.levels);
    }
  }
  let prune = defaults.prune;
  if (o.prune === false) prune = false;
  else if (o.prune !== undefined) {
    const p = checkObject(o.prune, 'options.prune');
    checkKeys(p, ['threshold', 'keepTopK', 'exitLayers'], 'options.prune');
    if (!defaults.prune) throw invalidParameter('options.prune', 'false: this model has no exit heads', o.prune);
    prune = checkPrune(p, defaults.prune, (field, expected, value) => {
      throw invalidParameter(`options.prune.${field}`, expected, value);
    });
  }
  return {
    size: size as number,
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
