/**
 * bench-cuda-model.ts: whole dense forwards of ViT-S/B/L (patch 16, random weights) on the GPU with
 * step-seg's CUDA runtime (native/cuda/device_model.cu), beside timm's same models in PyTorch bf16 on
 * the same GPU in the same run (scripts/bench_torch_cuda.py, spawned after our timings).
 *
 * Ours: `forwardFeatures` of a (1, 3, N, N) float32 image, merging and pruning off. Two figures:
 *   gpu ms   CUDA events from the pixel upload to the last kernel (stats.ms "... (gpu)" summed): the
 *            work PyTorch's figure covers, plus our 12 MB pixel upload at 1024²
 *   call ms  the whole call as Node sees it (queue, upload, forward, copying the tokens back)
 * PyTorch: forward_features of a bf16 input already on the GPU, CUDA events, median of N.
 * Ratio = torch ms / our gpu ms (above 1: ours is faster). GFLOPs are the forward's (stats.gflops).
 *
 * Usage (on the GPU machine; scripts/gpu-check.sh runs it):
 *   node --import tsx scripts/bench-cuda-model.ts [--iterations 20] [--sizes 512,768,1024]
 *     [--models s,b,l] [--python python3] [--no-torch] [--out FILE]
 * Without a usable GPU it prints why and exits 0 (1 when STEP_SEG_REQUIRE_CUDA=1).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { cudaStatus, loadModel } from '../lib/index';
import { cudaRequired } from '../test/helpers/gpu';
import { randomVit, rng } from '../test/helpers/random';

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
  const rows: { model: string; size: number; tokens: number; gflops: number; gpu: number; call: number; torch?: number }[] = [];
  for (const key of models) {
    const m = MODELS[key];
    const vit = randomVit({ embedDim: m.embedDim, depth: m.depth, numHeads: m.numHeads, imgSize: [224, 224], dtype: 'F16',
      classNames: Array.from({ length: 19 }, (_, i) => `c${i}`), seed: 1 });
    const model = await loadModel(vit.buffer, { device: 'cuda' });
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
        gpu.push(Object.entries(r.stats.ms).filter(([k]) => k.endsWith('(gpu)')).reduce((s, [, v]) => s + v, 0));
        tokens = r.stats.tokens.input, gflops = r.stats.gflops;
      }
      rows.push({ model: `ViT-${key.toUpperCase()}/16`, size: N, tokens, gflops, gpu: median(gpu), call: median(call) });
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
        const row = rows.find((x) => MODELS[x.model[4].toLowerCase()].timm === t.name && x.size === t.size);
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
  console.log(lines.join('\n'));
  const out = option('out', '');
  if (out) fs.writeFileSync(out, lines.join('\n') + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
