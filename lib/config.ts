/**
 * The model config: timm's VisionTransformer fields (snake_case, as timm and its checkpoints name
 * them) plus the segmentation fields step-seg adds. One JSON object, stored as `config.json` beside
 * `model.safetensors`, or as the `config` entry of the safetensors `__metadata__`.
 *
 * Backbone (timm names): `arch` ("timm.VisionTransformer"), `img_size` (int or [h, w]: the grid the
 * position embeddings were trained for), `patch_size`, `embed_dim`, `depth`, `num_heads`, `mlp_ratio`,
 * `qkv_bias` (true), `class_token` (true), `reg_tokens` (0), `no_embed_class` (false), `pre_norm`
 * (false), `init_values` (null: no layer scale), `norm_eps` (1e-6), `act` ("gelu_erf"),
 * `pixel_mean` / `pixel_std` (0..1 units, ImageNet's by default).
 * Segmentation: `class_names` (K strings), `num_classes` (K, optional when class_names is given),
 * `palette` (K [r, g, b] triples), `input_size` (the long side images are resized to; default: the
 * long side of img_size), `decoder` ({ "type": "linear" }: `decoder.head.weight` [K, C] and
 * `decoder.head.bias` [K] over the final-norm tokens).
 * Merging: `merge` (false, or { policy, levels, thresholds, color_tau, texture_tau, head_outputs }: see
 * MergeConfig). With policy "learned" the weights hold the policy: `policy.trunk.*` (timm
 * efficientnet_lite0 names, BatchNorm with running stats) and, for every window side S of `levels`,
 * `policy.heads.<S>.weight` [O, C] and `policy.heads.<S>.bias` [O], O = head_outputs (1: sigmoid,
 * 2: softmax with class 1 = merge) over feature map `policy_feature` (default 4, stride 32, C = 320) of
 * the input average-pooled by `policy_pool` (default 1), pooled to the window grid.
 * Pruning: `prune` ({ exit_layers, threshold, keep_top_k }), with weights `exit_heads.<layer>.norm.*`
 * [C] and `exit_heads.<layer>.head.weight` [K, C] / `.bias` [K] for every exit layer.
 */
import { BadModelError } from './errors';
import { shown } from './json';
import { float32Ok, kLimits } from './limits';
import type { NativeConfig } from './binding';

/** How superpatches are chosen (STEP's merging). */
export interface MergeConfig {
  /** `'similarity'`: training-free window similarity; `'learned'`: the policy CNN in the weights. */
  policy: 'similarity' | 'learned';
  /** Window sides in patches, largest first. */
  levels: number[];
  /** One per level; a window merges when its score >= threshold (above 1: never). */
  thresholds: number[];
  /** Similarity scorer scales, in 0..255 pixel units: colour spread and texture (see README). */
  colorTau: number;
  textureTau: number;
  /**
   * How a superpatch's logits go back to its patches: `'copy'` (every patch gets them, CTS's
   * unsharing) or `'blend'` (then each patch of an S x S superpatch averages them over an S x S box
   * around it: linear from one token centre to the next across superpatch borders; see README).
   */
  unshare: 'copy' | 'blend';
}

/** The training-free default: 8 x 8, 4 x 4 and 2 x 2 windows, stricter for larger ones. */
export const kDefaultMerge: MergeConfig = {
  policy: 'similarity',
  levels: [8, 4, 2],
  thresholds: [0.8, 0.7, 0.6],
  // Chosen on ../shared/images at 512-1024 px (scripts/token-picture.ts): sky, road and walls merge,
  // object edges and wheels stay single patches; 1.3-1.9x fewer tokens on street photos at 1024 px.
  colorTau: 16,
  textureTau: 32,
  // issue 17: a flat copy leaves superpatch-shaped label edges; blending removes them at no token cost
  unshare: 'blend',
};

/** Early pruning: exit heads after some blocks halt confident tokens (STEP's second half). */
export interface PruneConfig {
  /** Exits after these blocks (1-based count of blocks run); each has weights `exit_heads.<layer>.*`. */
  exitLayers: number[];
  /** A token halts when its largest softmax probability at an exit is >= threshold (above 1: never). */
  threshold: number;
  /** Per image and class, this many of the most confident halting tokens stay active as context. */
  keepTopK: number;
  /**
   * A token halts only when every patch bordering its superpatch carries its label (from the tokens
   * active at this exit, or the exit they halted at): tokens on class boundaries go on to the final head.
   */
  agree: boolean;
}

/** Pruning settings a config's `prune` object may leave out (its exit layers it must give). */
export const kDefaultPrune: Omit<PruneConfig, 'exitLayers'> = {
  // 0.9 with agreement: CamVid val at 960, 65.93 mIoU (dense 65.99), 2.56x tokens per block (chosen on val)
  threshold: 0.9,
  keepTopK: 5,
  // issue 17: halting on class boundaries is where pruning lost accuracy (CamVid val, README Accuracy)
  agree: true,
};

export interface ModelConfig {
  /** 'vit': a segmentation ViT; 'efficientnet_lite0': a bare merge-policy trunk (forwardFeatures only). */
  kind: 'vit' | 'efficientnet_lite0';
  arch: string;
  imgSize: [number, number];
  patchSize: number;
  embedDim: number;
  depth: number;
  numHeads: number;
  mlpRatio: number;
  qkvBias: boolean;
  classToken: boolean;
  regTokens: number;
  noEmbedClass: boolean;
  preNorm: boolean;
  layerScale: boolean;
  normEps: number;
  pixelMean: [number, number, number];
  pixelStd: [number, number, number];
  numClasses: number;
  classNames: string[];
  palette: [number, number, number][];
  inputSize: number;
  /** Default merging for segment(); per-call options override it. */
  merge: MergeConfig | false;
  /**
   * The learned merge policy in the weights: window sides with heads, outputs per head, the factor its
   * input is average-pooled by (`merge.policy_pool`: 1, 2 or 4) and the trunk's feature map its heads read
   * (`merge.policy_feature`: 0..4, stride 2 to 32 of the pooled input; the trunk stops there).
   */
  policy: { levels: number[]; outputs: 1 | 2; pool: 1 | 2 | 4; feature: number } | false;
  /** Exit heads in the weights and the default pruning (false: the model has no exit heads). */
  prune: PruneConfig | false;
  /** The config as read, for fields this version does not interpret. */
  raw: Record<string, unknown>;
}

const kImageNetMean: [number, number, number] = [0.485, 0.456, 0.406];
const kImageNetStd: [number, number, number] = [0.229, 0.224, 0.225];

function fail(where: string, field: string, expected: string, value: unknown): never {
  throw new BadModelError(`${where}: config field ${field} must be ${expected} but is ${shown(value)}`);
}

function int(raw: Record<string, unknown>, field: string, where: string, def: number | undefined, min: number, max: number): number {
  const v = raw[field] ?? def;
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) fail(where, field, `an integer from ${min} to ${max}`, raw[field]);
  return v as number;
}

function bool(raw: Record<string, unknown>, field: string, where: string, def: boolean): boolean {
  const v = raw[field] ?? def;
  if (typeof v !== 'boolean') fail(where, field, 'true or false', v);
  return v;
}

function triple(raw: Record<string, unknown>, field: string, where: string, def: [number, number, number], positive = false) {
  const v = raw[field] ?? def;
  // float32 in the engine; a std of 0 (or one that rounds to 0 there) would divide by zero
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => float32Ok(x, positive)))
    fail(where, field, positive ? 'an array of 3 positive numbers (at least 1.2e-38, float32)' : 'an array of 3 finite numbers', v);
  return [v[0], v[1], v[2]] as [number, number, number];
}

/** A colour per class: the config's palette, or a fixed, well-spread one. */
export function defaultPalette(k: number): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let i = 0; i < k; i++) {
    const h = (i * 0.618033988749895) % 1, s = 0.65, l = i % 2 ? 0.45 : 0.6;
    const f = (n: number) => {
      const a = s * Math.min(l, 1 - l), kk = (n + h * 12) % 12;
      return Math.round(255 * (l - a * Math.max(-1, Math.min(kk - 3, 9 - kk, 1))));
    };
    out.push([f(0), f(8), f(4)]);
  }
  return out;
}

/** Validates a config object; `where` names its source in messages. */
export function parseConfig(raw: unknown, where: string): ModelConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new BadModelError(`${where}: the config is not a JSON object`);
  const r = raw as Record<string, unknown>;
  const arch = (r.arch ?? 'timm.VisionTransformer') as string;
  if (typeof arch === 'string' && /efficientnet_lite0/i.test(arch)) return parseTrunkConfig(r, arch, where);
  if (typeof arch !== 'string' || !/VisionTransformer/i.test(arch))
    throw new BadModelError(`${where}: config arch ${shown(r.arch)} is not supported: expected a timm VisionTransformer`);
  const img = r.img_size;
  let imgSize: [number, number];
  const side = (d: unknown) => Number.isInteger(d) && (d as number) > 0 && (d as number) <= kLimits.imgSide;
  if (side(img)) imgSize = [img as number, img as number];
  else if (Array.isArray(img) && img.length === 2 && img.every(side)) imgSize = [img[0], img[1]];
  else fail(where, 'img_size', `a positive integer or [height, width], at most ${kLimits.imgSide}`, img);
  const patchSize = int(r, 'patch_size', where, undefined, 1, kLimits.patchSize);
  if (imgSize[0] % patchSize || imgSize[1] % patchSize) fail(where, 'img_size', `a multiple of patch_size ${patchSize}`, img);
  const embedDim = int(r, 'embed_dim', where, undefined, 1, kLimits.embedDim);
  const depth = int(r, 'depth', where, undefined, 1, kLimits.depth);
  const numHeads = int(r, 'num_heads', where, undefined, 1, embedDim);
  if (embedDim % numHeads) fail(where, 'num_heads', `a divisor of embed_dim ${embedDim}`, numHeads);
  const mlpRatio = (r.mlp_ratio ?? 4) as number;
  if (
    typeof mlpRatio !== 'number' ||
    !(mlpRatio > 0) ||
    !Number.isInteger(embedDim * mlpRatio) ||
    embedDim * mlpRatio > kLimits.mlpHidden
  )
    fail(where, 'mlp_ratio', `a positive number giving an integer hidden width (embed_dim * mlp_ratio) of at most ${kLimits.mlpHidden}`, r.mlp_ratio);
  const classToken = bool(r, 'class_token', where, true);
  const regTokens = int(r, 'reg_tokens', where, 0, 0, kLimits.regTokens);
  if (r.num_prefix_tokens !== undefined && r.num_prefix_tokens !== (classToken ? 1 : 0) + regTokens)
    fail(where, 'num_prefix_tokens', `${(classToken ? 1 : 0) + regTokens} (class_token + reg_tokens)`, r.num_prefix_tokens);
  const act = r.act ?? 'gelu_erf';
  if (act !== 'gelu_erf' && act !== 'gelu') fail(where, 'act', '"gelu_erf" (timm nn.GELU)', act);
  const normEps = (r.norm_eps ?? 1e-6) as number;
  if (!float32Ok(normEps, true)) fail(where, 'norm_eps', 'a positive number that float32 holds (1.2e-38 to 3.4e38)', r.norm_eps);
  const initValues = r.init_values ?? null;
  if (initValues !== null && !float32Ok(initValues)) fail(where, 'init_values', 'null or a finite number', initValues);

  let classNames: string[] = [];
  if (r.class_names !== undefined) {
    if (!Array.isArray(r.class_names) || !r.class_names.every((n) => typeof n === 'string'))
      fail(where, 'class_names', 'an array of strings', r.class_names);
    classNames = r.class_names as string[];
  }
  const numClasses = int(r, 'num_classes', where, classNames.length, 0, kLimits.numClasses);
  if (classNames.length && classNames.length !== numClasses)
    fail(where, 'num_classes', `${classNames.length} (the length of class_names)`, r.num_classes);
  if (!classNames.length) classNames = Array.from({ length: numClasses }, (_, i) => `class_${i}`);
  let palette = defaultPalette(numClasses);
  if (r.palette !== undefined) {
    const p = r.palette;
    if (
      !Array.isArray(p) ||
      p.length !== numClasses ||
      !p.every((c) => Array.isArray(c) && c.length === 3 && c.every((x) => Number.isInteger(x) && x >= 0 && x <= 255))
    )
      fail(where, 'palette', `${numClasses} [r, g, b] triples of integers 0..255`, p);
    palette = p as [number, number, number][];
  }
  if (r.decoder !== undefined) {
    const d = r.decoder as { type?: unknown };
    if (!d || d.type !== 'linear') fail(where, 'decoder', '{ "type": "linear" }', r.decoder);
  }
  const inputSize = int(r, 'input_size', where, Math.min(Math.max(...imgSize), kLimits.size), patchSize, kLimits.size);
  let merge: MergeConfig | false = kDefaultMerge;
  let policy: ModelConfig['policy'] = false;
  if (r.merge === false) merge = false;
  else if (r.merge !== undefined) {
    const m = r.merge as Record<string, unknown>;
    if (!m || typeof m !== 'object') fail(where, 'merge', 'false or an object', r.merge);
    merge = checkMerge(
      { policy: m.policy, levels: m.levels, thresholds: m.thresholds, colorTau: m.color_tau, textureTau: m.texture_tau, unshare: m.unshare },
      kDefaultMerge,
      (field, expected, value) => fail(where, `merge.${field}`, expected, value),
    );
    if (merge.policy === 'learned') {
      const outputs = m.head_outputs ?? 1;
      if (outputs !== 1 && outputs !== 2) fail(where, 'merge.head_outputs', '1 (sigmoid) or 2 (softmax)', outputs);
      const pool = m.policy_pool ?? 1;
      if (pool !== 1 && pool !== 2 && pool !== 4) fail(where, 'merge.policy_pool', '1, 2 or 4', pool);
      const feature = m.policy_feature ?? 4;
      if (!Number.isInteger(feature) || (feature as number) < 0 || (feature as number) > 4)
        fail(where, 'merge.policy_feature', 'an integer from 0 to 4 (the trunk feature map the heads read)', feature);
      const cell = (pool as number) * 2 ** ((feature as number) + 1);
      if (!merge.levels.every((side) => (side * patchSize) % cell === 0))
        fail(where, 'merge.levels', `window sides that are multiples of ${cell} px (the policy map's cell)`, merge.levels);
      policy = { levels: merge.levels, outputs: outputs as 1 | 2, pool: pool as 1 | 2 | 4, feature: feature as number };
    }
  }

  let prune: PruneConfig | false = false;
  if (r.prune !== undefined && r.prune !== false) {
    const p = r.prune as Record<string, unknown>;
    if (!p || typeof p !== 'object') fail(where, 'prune', 'false or an object', r.prune);
    if (numClasses === 0) fail(where, 'prune', 'absent for a model without classes (exit heads classify)', r.prune);
    const layers = p.exit_layers;
    if (!Array.isArray(layers) || !layers.length || !layers.every((l, i) => Number.isInteger(l) && l >= 1 && l < depth && (i === 0 || l > layers[i - 1])))
      fail(where, 'prune.exit_layers', `increasing block counts from 1 to ${depth - 1}`, layers);
    prune = checkPrune(
      { threshold: p.threshold, keepTopK: p.keep_top_k, agree: p.agree },
      { exitLayers: layers as number[], ...kDefaultPrune },
      (field, expected, value) => fail(where, `prune.${field}`, expected, value),
    );
  }

  return {
    kind: 'vit',
    arch,
    imgSize,
    patchSize,
    embedDim,
    depth,
    numHeads,
    mlpRatio,
    qkvBias: bool(r, 'qkv_bias', where, true),
    classToken,
    regTokens,
    noEmbedClass: bool(r, 'no_embed_class', where, false),
    preNorm: bool(r, 'pre_norm', where, false),
    layerScale: initValues !== null,
    normEps,
    pixelMean: triple(r, 'pixel_mean', where, kImageNetMean),
    pixelStd: triple(r, 'pixel_std', where, kImageNetStd, true),
    numClasses,
    classNames,
    palette,
    inputSize,
    merge,
    policy,
    prune,
    raw: r,
  };
}

// A bare timm efficientnet_lite0 (features_only) trunk: only its normalisation matters here;
// pixel_mean / pixel_std are in 0..255 units (127.5 for the policy), as the fixture's config gives them.
function parseTrunkConfig(r: Record<string, unknown>, arch: string, where: string): ModelConfig {
  const pixelMean = triple(r, 'pixel_mean', where, [127.5, 127.5, 127.5]);
  const pixelStd = triple(r, 'pixel_std', where, [127.5, 127.5, 127.5], true);
  return {
    kind: 'efficientnet_lite0',
    arch,
    imgSize: [1, 1],
    patchSize: 1,
    embedDim: 320,
    depth: 0,
    numHeads: 1,
    mlpRatio: 1,
    qkvBias: false,
    classToken: false,
    regTokens: 0,
    noEmbedClass: false,
    preNorm: false,
    layerScale: false,
    normEps: (r.bn_eps ?? 1e-5) as number,
    pixelMean,
    pixelStd,
    numClasses: 0,
    classNames: [],
    palette: [],
    inputSize: 512,
    merge: false,
    policy: false,
    prune: false,
    raw: r,
  };
}

export function toNativeConfig(c: ModelConfig): NativeConfig {
  return {
    arch: c.kind,
    patchSize: c.patchSize,
    embedDim: c.embedDim,
    depth: c.depth,
    numHeads: c.numHeads,
    mlpHidden: Math.round(c.embedDim * c.mlpRatio),
    qkvBias: c.qkvBias,
    classToken: c.classToken,
    regTokens: c.regTokens,
    noEmbedClass: c.noEmbedClass,
    preNorm: c.preNorm,
    layerScale: c.layerScale,
    normEps: c.normEps,
    gridH: c.imgSize[0] / c.patchSize,
    gridW: c.imgSize[1] / c.patchSize,
    numClasses: c.numClasses,
    exitLayers: c.prune ? c.prune.exitLayers : [],
    policyLevels: c.policy ? c.policy.levels : [],
    policyOutputs: c.policy ? c.policy.outputs : 1,
    policyPool: c.policy ? c.policy.pool : 1,
    policyFeature: c.policy ? c.policy.feature : 4,
  };
}

/**
 * Checks merge settings given as camelCase fields over `base`; `report(field, expected, value)` throws
 * the caller's error type (BadModelError for configs, BadInputError for options).
 */
export function checkMerge(
  m: Record<string, unknown>,
  base: MergeConfig,
  report: (field: string, expected: string, value: unknown) => never,
): MergeConfig {
  const policy = m.policy ?? base.policy;
  if (policy !== 'similarity' && policy !== 'learned') report('policy', "'similarity' or 'learned'", policy);
  const levels = m.levels ?? base.levels;
  if (
    !Array.isArray(levels) ||
    levels.length === 0 ||
    levels.length > 8 ||
    !levels.every((v, i) => Number.isInteger(v) && v >= 2 && v <= 64 && (i === 0 || v < levels[i - 1]))
  )
    report('levels', 'window sides in patches, integers from 2 to 64, largest first', levels);
  // A threshold means one scorer's score: switching the scorer does not carry the other's over. The
  // similarity scorer's defaults apply to its default levels; other levels, or the learned heads of a
  // model configured for similarity, need thresholds given.
  const switched = m.policy !== undefined && m.policy !== base.policy;
  let thresholds = m.thresholds ?? (m.levels === undefined && !switched ? base.thresholds : undefined);
  const defaultLevels = (levels as number[]).join() === kDefaultMerge.levels.join();
  if (thresholds === undefined && switched && policy === 'similarity' && defaultLevels) thresholds = kDefaultMerge.thresholds;
  if (!Array.isArray(thresholds) || thresholds.length !== levels.length || !thresholds.every((v) => typeof v === 'number' && !Number.isNaN(v)))
    report(
      'thresholds',
      `${levels.length} numbers, one per level` + (switched && m.thresholds === undefined ? ` (the config's thresholds are for the ${base.policy} scorer, not ${policy})` : ''),
      thresholds,
    );
  const colorTau = m.colorTau ?? base.colorTau, textureTau = m.textureTau ?? base.textureTau;
  // float32 in the engine: a positive value that rounds to 0 there would divide by zero
  const tau = (v: unknown) => v === Infinity || float32Ok(v, true);
  if (!tau(colorTau)) report('colorTau', 'a positive number (at least 1.2e-38)', colorTau);
  if (!tau(textureTau)) report('textureTau', 'a positive number (at least 1.2e-38)', textureTau);
  const unshare = m.unshare ?? base.unshare;
  if (unshare !== 'copy' && unshare !== 'blend') report('unshare', "'copy' or 'blend'", unshare);
  // copies: the caller's arrays may change after the call
  return { policy, levels: [...(levels as number[])], thresholds: [...(thresholds as number[])], colorTau, textureTau, unshare };
}

/** Checks pruning settings (camelCase fields) over `base`, whose exitLayers are those with weights. */
export function checkPrune(
  p: Record<string, unknown>,
  base: PruneConfig,
  report: (field: string, expected: string, value: unknown) => never,
): PruneConfig {
  const threshold = p.threshold ?? base.threshold;
  if (typeof threshold !== 'number' || Number.isNaN(threshold)) report('threshold', 'a number (confidence, 0 to 1; above 1 halts nothing)', threshold);
  const keepTopK = p.keepTopK ?? base.keepTopK;
  if (!Number.isInteger(keepTopK) || (keepTopK as number) < 0 || (keepTopK as number) > kLimits.keepTopK)
    report('keepTopK', `an integer from 0 to ${kLimits.keepTopK}`, keepTopK);
  const exitLayers = p.exitLayers ?? base.exitLayers;
  if (!Array.isArray(exitLayers) || !exitLayers.every((l, i) => base.exitLayers.includes(l) && (i === 0 || l > exitLayers[i - 1])))
    report('exitLayers', `increasing layers among the model's exit heads [${base.exitLayers.join(', ')}]`, exitLayers);
  const agree = p.agree ?? base.agree;
  if (typeof agree !== 'boolean') report('agree', 'a boolean', agree);
  return { exitLayers: [...(exitLayers as number[])], threshold, keepTopK: keepTopK as number, agree };
}
