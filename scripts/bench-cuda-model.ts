/**
 * bench-cuda-model.ts: whole dense forwards of ViT-S/B/L (patch 16, random weights) on the GPU with
 * step-seg's CUDA runtime (native/cuda/device_*.cu), beside timm's same models in PyTorch bf16 on
 * the same GPU in the same run (scripts/bench_torch_cuda.py, spawned after our timings).
 *
 * Ours: `forwardFeatures` of a (1, 3, N, N) float32 image, merging and pruning off. Two figures:
 *   gpu ms   CUDA events from the pixel upload to the last kernel (stats.ms "... (gpu)" summed): the
 *            work PyTorch's figure covers, plus our 12 MB pixel upload at 1024²
 *   call ms  the whole call as Node sees it (queue, upload, forward, copying the tokens back)
 * PyTorch: forward_features of a bf16 input already on the GPU, CUDA events, median of N.
 * Ratio = torch ms / our gpu ms (above 1: ours is faster). GFLOPs are the forward's (stats.gflops).
 *
 * --step adds STEP's table: `segment()` of the shared photos (../shared/images, resized so the long side
 * is N) dense, merged (similarity scorer) and merged + pruned (exit heads after 1/3 and 2/3 of the
 * blocks, --prune-threshold, default 0.9; random exit heads halt what their random confidences pass,
 * so the pruned rows measure the machinery at that halting rate, not a trained model's): tokens,
 * GFLOPs, ms (GPU, events) and the speed-up over PyTorch's dense forward of the same size.
 *
 * Usage (on the GPU machine; scripts/gpu-check.sh runs it):
 *   node --import tsx scripts/bench-cuda-model.ts [--iterations 20] [--sizes 512,768,1024]
 *     [--models s,b,l] [--python python3] [--no-torch] [--step] [--prune-threshold 0.9] [--out FILE]
 * Without a usable GPU it prints why and exits 0 (1 when STEP_SEG_REQUIRE_CUDA=1).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import sharp from 'sharp';

import { cudaStatus, loadModel, type Model } from '../lib/index';
import { cudaRequired } from '../lib/cuda-ops';
import { sharedImages } from './bench-common';
import { randomVit, rng } from './cases/random';

const MODELS: Record<string, { timm: string; embedDim: number; depth: number; numHeads: number }> = {
  s: { timm: 'vit_small_patch16_224', embedDim: 384, depth: 12, numHeads: 6 },
  b: { timm: 'vit_base_patch16_224', embedDim: 768, depth: 12, numHeads: 12 },
  l: { timm: 'vit_large_patch16_224', embedDim: 1024, depth: 24, numHeads: 16 },
};

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const iterations = Number(option('iterations', '20'));
  const sizes = option('sizes', '512,768,1024').split(',').map(Number);
  const models = option('models', 's,b,l').split(',');
  const status = await cudaStatus();
  if (!status.usable) {
    console.log(`bench-cuda-model: no GPU here: ${status.reason}`);
    process.exit(cudaRequired ? 1 : 0);
  }
  const rows: { model: string; timm: string; size: number; tokens: number; gflops: number; gpu: number; call: number; torch?: number }[] = [];
  const stepRows: { model: string; size: number; mode: string; tokens: number; gflops: number; gpu: number }[] = [];
  const step = process.argv.includes('--step');
  const photos = step ? await loadPhotos(sizes) : new Map<number, RawImage[]>();
  for (const key of models) {
    const m = MODELS[key];
    const exits = [Math.round(m.depth / 3), Math.round((2 * m.depth) / 3)];
    const vit = randomVit({ embedDim: m.embedDim, depth: m.depth, numHeads: m.numHeads, imgSize: [224, 224], dtype: 'F16',
      classNames: Array.from({ length: 19 }, (_, i) => `c${i}`), seed: 1, exitLayers: exits });
    const model = await loadModel(vit.buffer, { device: 'cuda' });
    if (step) stepRows.push(...(await stepTable(model, `ViT-${key.toUpperCase()}/16`, photos, iterations)));
    for (const N of sizes) {
      const rand = rng(N);
      const data = new Float32Array(3 * N * N).map(() => rand() * 2 - 1);
      const dims: [number, number, number, number] = [1, 3, N, N];
      for (let i = 0; i < 2; ++i) await model.forwardFeatures({ data, dims });
      const gpu: number[] = [], call: number[] = [];
      let tokens = 0, gflops = 0;
      for (let i = 0; i < iterations; ++i) {
        const t0 = performance.now();
        const r = await model.forwardFeatures({ data, dims });
        call.push(performance.now() - t0);
        gpu.push(Object.entries(r.stats.ms).filter(([k]) => k.endsWith('(gpu)')).reduce((s, [, v]) => s + (v ?? 0), 0));
        tokens = r.dims[1], gflops = r.stats.gflops;
      }
      rows.push({ model: `ViT-${key.toUpperCase()}/16`, timm: m.timm, size: N, tokens, gflops, gpu: median(gpu), call: median(call) });
    }
    model.dispose();
  }
  let torchNote = '';
  if (!process.argv.includes('--no-torch')) {
    const spec = { gemm: [], attention: [], models: models.flatMap((k) => sizes.map((N) => [MODELS[k].timm, N])) };
    const r = spawnSync(option('python', 'python3'), [path.join(__dirname, 'bench_torch_cuda.py'), '--json', '--iterations', String(iterations), '--spec', JSON.stringify(spec)], { encoding: 'utf8', maxBuffer: 1 << 26 });
    const last = (r.stdout ?? '').trim().split('\n').pop() ?? '';
    try {
      const res = JSON.parse(last) as { error?: string; torch?: string; models?: { name: string; size: number; ms: number }[] };
      if (res.error) torchNote = `PyTorch: ${res.error}`;
      else torchNote = `PyTorch ${res.torch}`;
      for (const t of res.models ?? []) {
        const row = rows.find((x) => x.timm === t.name && x.size === t.size);
        if (row) row.torch = t.ms;
      }
    } catch {
      torchNote = `PyTorch peer failed: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}`;
    }
  }
  const lines = [
    `dense forward, batch 1, bf16, ${status.name}; median of ${iterations}; ${torchNote}`,
    'model      size  tokens  GFLOPs   gpu ms  call ms  torch ms  torch/gpu',
    ...rows.map((r) => `${r.model.padEnd(10)} ${String(r.size).padStart(4)}  ${String(r.tokens).padStart(6)}  ${r.gflops.toFixed(0).padStart(6)}  ` +
      `${r.gpu.toFixed(2).padStart(7)}  ${r.call.toFixed(2).padStart(7)}  ${r.torch?.toFixed(2).padStart(8) ?? '       -'}  ` +
      `${r.torch ? (r.torch / r.gpu).toFixed(2).padStart(9) : '        -'}`),
  ];
  if (step) {
    lines.push('', `STEP on ${photos.get(sizes[0])?.length ?? 0} shared photos (long side = size), segment() GPU ms (events), mean per photo`,
      'model      size  mode              tokens  GFLOPs   gpu ms  torch dense ms  speed-up');
    for (const r of stepRows) {
      const t = rows.find((x) => x.model === r.model && x.size === r.size)?.torch;
      lines.push(`${r.model.padEnd(10)} ${String(r.size).padStart(4)}  ${r.mode.padEnd(16)} ${r.tokens.toFixed(0).padStart(7)}  ` +
        `${r.gflops.toFixed(0).padStart(6)}  ${r.gpu.toFixed(2).padStart(7)}  ${t?.toFixed(2).padStart(14) ?? '             -'}  ` +
        `${t ? (t / r.gpu).toFixed(2).padStart(8) : '       -'}`);
    }
  }
  console.log(lines.join('\n'));
  const out = option('out', '');
  if (out) fs.writeFileSync(out, lines.join('\n') + '\n');
}

interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 3;
}

/** The shared photos, resized so the long side is each size (none when ../shared is absent). */
async function loadPhotos(sizes: number[]): Promise<Map<number, RawImage[]>> {
  const files = sharedImages();
  if (!files.length) console.log('bench-cuda-model: ../shared/images is absent: no STEP table');
  const out = new Map<number, RawImage[]>();
  for (const N of sizes) {
    const list: RawImage[] = [];
    for (const f of files) {
      const { data, info } = await sharp(f).rotate().removeAlpha().resize(N, N, { fit: 'inside' }).raw().toBuffer({ resolveWithObject: true });
      list.push({ data: new Uint8Array(data), width: info.width, height: info.height, channels: 3 });
    }
    out.set(N, list);
  }
  return out;
}

/** segment() of every photo dense, merged, merged + pruned: mean tokens, GFLOPs and GPU ms. */
async function stepTable(model: Model, name: string, photos: Map<number, RawImage[]>, iterations: number) {
  const threshold = Number(option('prune-threshold', '0.9'));
  const modes = [
    ['dense', { merge: false, prune: false }],
    ['merged', { prune: false }],
    ['merged + pruned', { prune: { threshold } }],
  ] as const;
  const rows: { model: string; size: number; mode: string; tokens: number; gflops: number; gpu: number }[] = [];
  for (const [size, list] of photos) {
    for (const [mode, opts] of modes) {
      let tokens = 0, gflops = 0, gpu = 0;
      for (const im of list) {
        for (let i = 0; i < 2; ++i) await model.segment(im, opts); // warm-up, graph capture
        const ms: number[] = [];
        let r = await model.segment(im, opts);
        for (let i = 0; i < Math.max(3, Math.floor(iterations / 4)); ++i) {
          r = await model.segment(im, opts);
          ms.push(Object.entries(r.stats.ms).filter(([k]) => k.endsWith('(gpu)')).reduce((s, [, v]) => s + (v ?? 0), 0));
        }
        const blocks = r.stats.tokens.perBlock;
        tokens += blocks.reduce((a, b) => a + b, 0) / blocks.length, gflops += r.stats.gflops, gpu += median(ms);
      }
      const n = Math.max(list.length, 1);
      rows.push({ model: name, size, mode, tokens: tokens / n, gflops: gflops / n, gpu: gpu / n });
    }
  }
  return rows;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
