// Seeded random numbers and random ViT models for tests and scripts.
import { encodeSafetensors } from '../../lib/safetensors';

/** mulberry32: a small, fast, seeded generator of floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Approximately normal values (sum of uniforms), mean 0, standard deviation `std`. */
export function randn(n: number, rand: () => number, std = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rand() + rand() + rand() + rand() - 2) * Math.sqrt(3) * std;
  return out;
}

/** float32 -> IEEE half bits, round to nearest even. */
export function toHalf(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < values.length; i++) {
    f[0] = values[i];
    const x = u[0], sign = (x >>> 16) & 0x8000;
    let exp = ((x >>> 23) & 0xff) - 127 + 15, man = x & 0x7fffff;
    if (exp >= 31) out[i] = sign | 0x7c00 | (((x >>> 23) & 0xff) === 0xff && man ? 0x200 : 0);
    else if (exp <= 0) {
      if (exp < -10) out[i] = sign;
      else {
        man |= 0x800000;
        const shift = 14 - exp;
        let h = man >>> shift;
        const rem = man & ((1 << shift) - 1), half = 1 << (shift - 1);
        if (rem > half || (rem === half && h & 1)) h++;
        out[i] = sign | h;
      }
    } else {
      let h = (exp << 10) | (man >>> 13);
      const rem = man & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
      out[i] = sign | h;
    }
  }
  return out;
}

export interface VitSpec {
  embedDim: number;
  depth: number;
  numHeads: number;
  imgSize: [number, number];
  patchSize?: number;
  classToken?: boolean;
  classNames?: string[];
  inputSize?: number;
  dtype?: 'F32' | 'F16';
  seed?: number;
  /** Exit heads after these blocks, with a `prune` config (threshold 0.95, keep_top_k 5 unless set). */
  exitLayers?: number[];
  extraConfig?: Record<string, unknown>;
}

/** Random timm-style ViT weights plus config, as a safetensors Buffer with the config in __metadata__. */
export function randomVit(spec: VitSpec): {
  buffer: Buffer;
  config: Record<string, unknown>;
  tensors: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
} {
  const rand = rng(spec.seed ?? 1);
  const C = spec.embedDim, P = spec.patchSize ?? 16, cls = spec.classToken ?? true, Hd = 4 * C;
  const grid = (spec.imgSize[0] / P) * (spec.imgSize[1] / P);
  const shapes: Record<string, number[]> = {
    'patch_embed.proj.weight': [C, 3, P, P],
    'patch_embed.proj.bias': [C],
    ...(cls ? { cls_token: [1, 1, C] } : {}),
    pos_embed: [1, grid + (cls ? 1 : 0), C],
  };
  for (let i = 0; i < spec.depth; i++) {
    const b = `blocks.${i}.`;
    Object.assign(shapes, {
      [b + 'norm1.weight']: [C], [b + 'norm1.bias']: [C],
      [b + 'attn.qkv.weight']: [3 * C, C], [b + 'attn.qkv.bias']: [3 * C],
      [b + 'attn.proj.weight']: [C, C], [b + 'attn.proj.bias']: [C],
      [b + 'norm2.weight']: [C], [b + 'norm2.bias']: [C],
      [b + 'mlp.fc1.weight']: [Hd, C], [b + 'mlp.fc1.bias']: [Hd],
      [b + 'mlp.fc2.weight']: [C, Hd], [b + 'mlp.fc2.bias']: [C],
    });
  }
  shapes['norm.weight'] = [C];
  shapes['norm.bias'] = [C];
  const K = spec.classNames?.length ?? 0;
  if (K) {
    shapes['decoder.head.weight'] = [K, C];
    shapes['decoder.head.bias'] = [K];
  }
  for (const layer of spec.exitLayers ?? []) {
    const e = `exit_heads.${layer}.`;
    Object.assign(shapes, { [e + 'norm.weight']: [C], [e + 'norm.bias']: [C], [e + 'head.weight']: [K, C], [e + 'head.bias']: [K] });
  }
  const tensors: Record<string, Float32Array> = {};
  const out: Record<string, { dtype: 'F32' | 'F16'; shape: number[]; data: Float32Array | Uint16Array }> = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    let data: Float32Array;
    if (name.endsWith('norm1.weight') || name.endsWith('norm2.weight') || name.endsWith('norm.weight')) {
      data = randn(n, rand, 0.1).map((v) => 1 + v);
    } else if (name.endsWith('.weight')) {
      const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
      data = randn(n, rand, 1 / Math.sqrt(fanIn));
    } else {
      data = randn(n, rand, name.endsWith('bias') ? 0.05 : 0.5);
    }
    if (spec.dtype === 'F16') {
      const half = toHalf(data);
      out[name] = { dtype: 'F16', shape, data: half };
    } else out[name] = { dtype: 'F32', shape, data };
    tensors[name] = data;
  }
  const config: Record<string, unknown> = {
    arch: 'timm.VisionTransformer',
    img_size: spec.imgSize,
    patch_size: P,
    embed_dim: C,
    depth: spec.depth,
    num_heads: spec.numHeads,
    mlp_ratio: 4,
    qkv_bias: true,
    class_token: cls,
    norm_eps: 1e-6,
    act: 'gelu_erf',
    pixel_mean: [0.485, 0.456, 0.406],
    pixel_std: [0.229, 0.224, 0.225],
    ...(K ? { class_names: spec.classNames, num_classes: K, decoder: { type: 'linear' } } : {}),
    ...(spec.inputSize ? { input_size: spec.inputSize } : {}),
    ...(spec.exitLayers ? { prune: { exit_layers: spec.exitLayers, threshold: 0.95, keep_top_k: 5 } } : {}),
    ...spec.extraConfig,
  };
  return { buffer: encodeSafetensors(out, { config: JSON.stringify(config) }), config, tensors, shapes };
}

/**
 * Random timm efficientnet_lite0 trunk tensors (BatchNorm with running stats), names under `prefix`;
 * with `features` < 5, only the blocks up to feature map features - 1 (a truncated policy trunk: the
 * same tensors as the full trunk's of the same seed, minus the later stages). Convolution weights are
 * N(0, gain^2 / fan-in): at 1.5 the trunk amplifies small differences (a bf16 rounding grows to ~50% of
 * the features' spread by the last stage); at 1.0 it damps them.
 */
export function randomEffnet(prefix: string, seed = 1, features = 5, gain = 1.5): Record<string, { shape: number[]; data: Float32Array }> {
  const lastStage = [0, 1, 2, 4, 6][features - 1];
  const rand = rng(seed);
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  const conv = (name: string, shape: number[]) => {
    const fanIn = shape[1] * shape[2] * shape[3];
    out[prefix + name + '.weight'] = { shape, data: randn(shape.reduce((a, b) => a * b, 1), rand, gain / Math.sqrt(fanIn)) };
  };
  const bn = (name: string, c: number) => {
    out[prefix + name + '.weight'] = { shape: [c], data: randn(c, rand, 0.1).map((v) => 1 + v) };
    out[prefix + name + '.bias'] = { shape: [c], data: randn(c, rand, 0.1) };
    out[prefix + name + '.running_mean'] = { shape: [c], data: randn(c, rand, 0.1) };
    out[prefix + name + '.running_var'] = { shape: [c], data: randn(c, rand, 0.1).map((v) => 1 + Math.abs(v)) };
  };
  conv('conv_stem', [32, 3, 3, 3]);
  bn('bn1', 32);
  conv('blocks.0.0.conv_dw', [32, 1, 3, 3]);
  bn('blocks.0.0.bn1', 32);
  conv('blocks.0.0.conv_pw', [16, 32, 1, 1]);
  bn('blocks.0.0.bn2', 16);
  let inC = 16;
  // (repeats, kernel, out) of timm's efficientnet_lite0 inverted-residual stages, expansion 6
  const stages: [number, number, number][] = [[2, 3, 24], [2, 5, 40], [3, 3, 80], [3, 5, 112], [4, 5, 192], [1, 3, 320]];
  stages.forEach(([repeats, k, c], s) => {
    if (s + 1 > lastStage) return;
    for (let r = 0; r < repeats; r++) {
      const b = `blocks.${s + 1}.${r}.`, mid = inC * 6;
      conv(b + 'conv_pw', [mid, inC, 1, 1]);
      bn(b + 'bn1', mid);
      conv(b + 'conv_dw', [mid, 1, k, k]);
      bn(b + 'bn2', mid);
      conv(b + 'conv_pwl', [c, mid, 1, 1]);
      bn(b + 'bn3', c);
      inC = c;
    }
  });
  return out;
}

/**
 * A random ViT (randomVit's output) with a learned merge policy: a random trunk (randomEffnet, seed
 * `trunkSeed`) and one head per side in `heads` (weights and bias given), sigmoid heads (outputs 1) or
 * their 2-way softmax form (outputs 2: class-1 minus class-0 logit equals the sigmoid head's logit).
 */
export function withPolicy(
  vit: ReturnType<typeof randomVit>,
  trunk: Record<string, { shape: number[]; data: Float32Array }>,
  heads: Record<string, { shape: number[]; data: Float32Array }>,
  merge: { levels: number[]; thresholds: number[]; policy_pool?: number; policy_feature?: number },
  outputs: 1 | 2 = 1,
): Buffer {
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, data] of Object.entries(vit.tensors)) tensors[name] = { dtype: 'F32', shape: vit.shapes[name], data };
  for (const [name, t] of Object.entries(trunk)) tensors[name] = { dtype: 'F32', ...t };
  for (const [name, t] of Object.entries(heads)) {
    if (outputs === 1) tensors[name] = { dtype: 'F32', ...t };
    else {
      const zeros = new Float32Array(t.data.length);
      tensors[name] = { dtype: 'F32', shape: [2, ...t.shape.slice(1)], data: Float32Array.from([...zeros, ...t.data]) };
    }
  }
  const config = { ...vit.config, merge: { policy: 'learned', ...merge, head_outputs: outputs } };
  return encodeSafetensors(tensors, { config: JSON.stringify(config) });
}
