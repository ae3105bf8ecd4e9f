// The GPU self-check's fixed inputs: a tiny ViT (2 blocks, 64 channels, 2 heads, 16-px patches, 4
// classes, exit heads after block 1) with deterministic weights, a 96 x 80 test image, and the rule
// that the GPU's patch logits must meet against the CPU's. device 'auto' takes the GPU only after this
// check has passed in the process (model.ts runs it once, on first use); it costs a few milliseconds on
// a GPU and exercises every kernel family of a forward: normalise, score and select superpatches,
// patch embedding, LayerNorm, GEMMs with their epilogues, attention, halting and compaction, unsharing
// and upsampling.
import { encodeSafetensors } from './safetensors';

const kDim = 64, kHeads = 2, kDepth = 2, kPatch = 16, kClasses = 4, kHidden = 4 * kDim;

/** GPU logits (bf16 GEMMs and attention) against the CPU's: relative L2 at most this. */
export const kSelfCheckTolerance = 2e-2;

/** A deterministic normal(0, std) sequence (an LCG through Box-Muller): the same weights everywhere. */
function normals(n: number, std: number, state: { s: number }): Float32Array {
  const out = new Float32Array(n);
  const next = () => {
    state.s = (Math.imul(state.s, 1664525) + 1013904223) >>> 0;
    return (state.s + 0.5) / 4294967296;
  };
  for (let i = 0; i < n; i++) out[i] = std * Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  return out;
}

/** The self-check model as a safetensors Buffer with its config in __metadata__. */
export function selfCheckModel(): Buffer {
  const state = { s: 20261201 };
  const C = kDim, grid = 4 * 4; // the config's 64 x 64 position grid, resampled for other sizes
  const shapes: [string, number[]][] = [
    ['patch_embed.proj.weight', [C, 3, kPatch, kPatch]],
    ['patch_embed.proj.bias', [C]],
    ['cls_token', [1, 1, C]],
    ['pos_embed', [1, grid + 1, C]],
  ];
  for (let i = 0; i < kDepth; i++) {
    const b = `blocks.${i}.`;
    shapes.push(
      [b + 'norm1.weight', [C]], [b + 'norm1.bias', [C]], [b + 'attn.qkv.weight', [3 * C, C]], [b + 'attn.qkv.bias', [3 * C]],
      [b + 'attn.proj.weight', [C, C]], [b + 'attn.proj.bias', [C]], [b + 'norm2.weight', [C]], [b + 'norm2.bias', [C]],
      [b + 'mlp.fc1.weight', [kHidden, C]], [b + 'mlp.fc1.bias', [kHidden]], [b + 'mlp.fc2.weight', [C, kHidden]],
      [b + 'mlp.fc2.bias', [C]],
    );
  }
  shapes.push(['norm.weight', [C]], ['norm.bias', [C]], ['decoder.head.weight', [kClasses, C]], ['decoder.head.bias', [kClasses]]);
  shapes.push(['exit_heads.1.norm.weight', [C]], ['exit_heads.1.norm.bias', [C]]);
  shapes.push(['exit_heads.1.head.weight', [kClasses, C]], ['exit_heads.1.head.bias', [kClasses]]);
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    let data: Float32Array;
    if (/norm\d?\.weight$/.test(name)) data = normals(n, 0.1, state).map((v) => 1 + v);
    else if (name.endsWith('.weight')) data = normals(n, 1 / Math.sqrt(shape.slice(1).reduce((a, b) => a * b, 1)), state);
    else data = normals(n, name.endsWith('bias') ? 0.05 : 0.5, state);
    tensors[name] = { dtype: 'F32', shape, data };
  }
  const config = {
    arch: 'timm.VisionTransformer',
    img_size: [64, 64],
    patch_size: kPatch,
    embed_dim: C,
    depth: kDepth,
    num_heads: kHeads,
    mlp_ratio: 4,
    qkv_bias: true,
    class_token: true,
    norm_eps: 1e-6,
    act: 'gelu_erf',
    pixel_mean: [0.485, 0.456, 0.406],
    pixel_std: [0.229, 0.224, 0.225],
    class_names: ['a', 'b', 'c', 'd'],
    num_classes: kClasses,
    decoder: { type: 'linear' },
    input_size: 96,
    prune: { exit_layers: [1], threshold: 0.5, keep_top_k: 1 },
  };
  return encodeSafetensors(tensors, { config: JSON.stringify(config) });
}

/** A 96 x 80 RGB image: flat regions (which merge into superpatches) beside a textured band. */
export function selfCheckImage(): { data: Uint8Array; width: number; height: number; channels: 3 } {
  const width = 96, height = 80, data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const i = 3 * (y * width + x), textured = x >= 64;
      data[i] = textured ? (x * 37 + y * 11) % 256 : y < 40 ? 200 : 40;
      data[i + 1] = textured ? (x * y) % 256 : 120;
      data[i + 2] = textured ? (x * 7 + y * 29) % 256 : y < 40 ? 30 : 220;
    }
  return { data, width, height, channels: 3 };
}

/** Why the GPU's logits fail the check against the CPU's, or undefined when they pass. */
export function compareSelfCheck(cpu: Float32Array, gpu: Float32Array): string | undefined {
  if (cpu.length !== gpu.length) return `the GPU gave ${gpu.length} logits where the CPU gave ${cpu.length}`;
  let num = 0, den = 0;
  for (let i = 0; i < cpu.length; i++) {
    if (!Number.isFinite(gpu[i])) return `the GPU gave a non-finite logit (${gpu[i]}) at ${i}`;
    num += (gpu[i] - cpu[i]) ** 2;
    den += cpu[i] ** 2;
  }
  const rel = Math.sqrt(num / Math.max(den, 1e-30));
  return rel <= kSelfCheckTolerance
    ? undefined
    : `the GPU's logits differ from the CPU's by ${rel.toExponential(2)} (relative L2; at most ${kSelfCheckTolerance} expected)`;
}
