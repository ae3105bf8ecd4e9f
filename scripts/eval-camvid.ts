// mIoU on CamVid val with the engine (not PyTorch): one confusion matrix over the whole split, per
// setting and size, with tokens, GFLOPs and ms per image, as one table.
//   node --import tsx scripts/eval-camvid.ts [--model DIR] [--data ../shared/data/camvid]
//        [--sizes 480,960,1024] [--limit N] [--settings dense,similarity,prune,similarity+prune,learned,learned+prune]
//        [--markdown FILE] [--prune-threshold X] [--keep-top-k N] [--learned-thresholds a,b,c]
//        [--similarity-thresholds a,b,c] [--unshare copy|blend] [--agree true|false]
//        (override the model's config, for choosing settings on val)
//        [--precision fp32,bf16]   (the CPU's arithmetic, loadModel's `precision`; several: one table
//        each, on the same images, then the share of pixels whose label differs from the first's)
// 'vs dense' is the share of pixels whose label differs from the dense setting's at the same size and
// precision (run dense first); 'differ' the share that differs from the first precision's.
// Columns: mIoU (%), tokens entering the encoder, mean tokens per block (what the encoder's cost
// follows once exits shrink the list), the cut in tokens per block and in GFLOPs against dense at the
// same size, GFLOPs and ms per image (2 threads unless STEP_SEG_NUM_THREADS says otherwise). --markdown
// also writes the table as Markdown (the README's).
// Sizes are the long side: 480 is CamVid's own 480 x 360, 960 is 960 x 720 (2x), 1024 a 1024-px long
// side. Labels: 0..10 the classes, 11 void (ignored). Settings a model cannot run (learned without a
// policy, pruning without exit heads) are skipped with a line saying so.
import * as fs from 'node:fs';
import * as path from 'node:path';

import sharp from 'sharp';

import { loadModel, type SegmentOptions } from '../lib/index';

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const data = flag('--data', path.join(__dirname, '..', '..', 'shared', 'data', 'camvid'));
const sizes = flag('--sizes', '480,960,1024').split(',').map(Number);
const limit = Number(flag('--limit', '0'));
const settings = flag('--settings', 'dense,similarity,similarity+prune,learned,learned+prune').split(',');
const markdown = flag('--markdown', '');
const list = (name: string) => (args.includes(name) ? flag(name, '').split(',').map(Number) : undefined);
const pruneOverride = {
  ...(args.includes('--prune-threshold') ? { threshold: Number(flag('--prune-threshold', '')) } : {}),
  ...(args.includes('--keep-top-k') ? { keepTopK: Number(flag('--keep-top-k', '')) } : {}),
  ...(args.includes('--agree') ? { agree: flag('--agree', '') === 'true' } : {}),
};
const unshare = args.includes('--unshare') ? { unshare: flag('--unshare', '') as 'copy' | 'blend' } : {};
const learnedThresholds = list('--learned-thresholds');
const similarityThresholds = list('--similarity-thresholds');
const precisions = flag('--precision', 'fp32').split(',') as ('fp32' | 'bf16')[];
const K = 11, VOID = 11;

function optionsFor(setting: string, model: Awaited<ReturnType<typeof loadModel>>): SegmentOptions | undefined {
  const hasPolicy = !!model.config.policy, hasExits = !!model.config.prune;
  const similarity = { policy: 'similarity' as const, ...unshare, ...(similarityThresholds ? { thresholds: similarityThresholds } : {}) };
  const learned = { policy: 'learned' as const, ...unshare, ...(learnedThresholds ? { thresholds: learnedThresholds } : {}) };
  const prune = pruneOverride; // {}: the model's prune config
  switch (setting) {
    case 'dense': return { merge: false, prune: false };
    case 'similarity': return { merge: similarity, prune: false };
    case 'prune': return hasExits ? { merge: false, prune } : undefined;
    case 'similarity+prune': return hasExits ? { merge: similarity, prune } : undefined;
    case 'learned': return hasPolicy ? { merge: learned, prune: false } : undefined;
    case 'learned+prune': return hasPolicy && hasExits ? { merge: learned, prune } : undefined;
    default: throw new Error(`unknown setting ${setting}`);
  }
}

(async () => {
  if (!fs.existsSync(path.join(data, 'val.txt'))) {
    console.log(`eval-camvid: no CamVid at ${data} (pass --data)`);
    return;
  }
  const names = fs.readdirSync(path.join(data, 'val')).filter((f) => f.endsWith('.png')).sort();
  const files = limit > 0 ? names.slice(0, limit) : names;
  console.log(`${files.length} val images from ${data}`);
  const md = ['| setting | size | mIoU | tokens in | tokens per block | token cut | GFLOPs | GFLOP cut | ms / image |', '|---|---|---|---|---|---|---|---|---|'];
  const firstLabels = new Map<string, Uint8Array[]>(); // setting@size -> labels of the first precision
  for (const precision of precisions) {
  const model = await loadModel(args.includes('--model') ? flag('--model', '') : undefined, { device: 'cpu', precision });
  if (model.config.numClasses !== K) console.log(`note: the model has ${model.config.numClasses} classes, CamVid ${K}`);
  if (model.precision !== precision) console.log(`note: ${precision} asked, ${model.precision} runs: ${model.precisionReason}`);
  console.log(`\nprecision ${model.precision}`);
  console.log('setting           size     mIoU   tokens  /block  dense  token cut  GFLOPs  GFLOP cut   ms/img  vs dense  differ');
  const denseAt = new Map<number, { perBlock: number; gflops: number }>();
  const denseLabels = new Map<number, Uint8Array[]>(); // size -> dense labels per image
  for (const setting of settings) {
    const options = optionsFor(setting, model);
    if (!options) {
      console.log(`${setting.padEnd(16)}  skipped: the model has no ${setting.includes('learned') ? 'learned policy' : 'exit heads'}`);
      continue;
    }
    for (const size of sizes) {
      const confusion = new Float64Array(K * K);
      let tokens = 0, dense = 0, gflops = 0, ms = 0, perBlock = 0, differ = 0, pixels = 0, offDense = 0;
      const denseHere = setting === 'dense' ? [] : denseLabels.get(size);
      const key = `${setting}@${size}`, first = firstLabels.get(key), mine: Uint8Array[] = [];
      for (const [f, name] of files.entries()) {
        const label = await sharp(path.join(data, 'valannot', name)).extractChannel(0).raw().toBuffer();
        const r = await model.segment(path.join(data, 'val', name), { ...options, size });
        if (first) for (let i = 0; i < r.labels.length; i++) differ += r.labels[i] !== first[f][i] ? 1 : 0;
        else mine.push(r.labels as Uint8Array);
        if (setting === 'dense') denseHere?.push(r.labels as Uint8Array);
        else if (denseHere) for (let i = 0; i < r.labels.length; i++) offDense += r.labels[i] !== denseHere[f][i] ? 1 : 0;
        pixels += r.labels.length;
        for (let i = 0; i < label.length; i++) if (label[i] !== VOID && label[i] < K) confusion[label[i] * K + r.labels[i]]++;
        tokens += r.stats.tokens.input;
        const blocks = r.stats.tokens.perBlock;
        perBlock += blocks.reduce((a, b) => a + b, 0) / blocks.length;
        dense += r.stats.tokens.dense;
        gflops += r.stats.gflops;
        ms += r.stats.ms.total;
      }
      if (!first) firstLabels.set(key, mine);
      if (setting === 'dense' && denseHere) denseLabels.set(size, denseHere);
      let iou = 0;
      for (let k = 0; k < K; k++) {
        let row = 0, col = 0;
        for (let j = 0; j < K; j++) row += confusion[k * K + j], col += confusion[j * K + k];
        const union = row + col - confusion[k * K + k];
        iou += union > 0 ? confusion[k * K + k] / union : 0;
      }
      const n = files.length;
      if (setting === 'dense') denseAt.set(size, { perBlock: perBlock / n, gflops: gflops / n });
      const base = denseAt.get(size);
      const tokenCut = base ? `${(base.perBlock / (perBlock / n)).toFixed(2)}x` : '-';
      const flopCut = base ? `${(base.gflops / (gflops / n)).toFixed(2)}x` : '-';
      const sizeName = size === 480 ? '480x360' : size === 960 ? '960x720' : `${size} long side`;
      console.log(
        `${setting.padEnd(16)} ${String(size).padStart(5)} ${((100 * iou) / K).toFixed(2).padStart(8)} ${(tokens / n).toFixed(0).padStart(8)} ` +
          `${(perBlock / n).toFixed(0).padStart(7)} ${(dense / n).toFixed(0).padStart(6)} ${tokenCut.padStart(10)} ` +
          `${(gflops / n).toFixed(2).padStart(7)} ${flopCut.padStart(10)} ${(ms / n).toFixed(0).padStart(8)}` +
          `${setting !== 'dense' && denseHere ? `${((100 * offDense) / pixels).toFixed(2).padStart(9)}%` : '         -'}` +
          `${first ? `${((100 * differ) / pixels).toFixed(3).padStart(7)}%` : '       -'}`,
      );
      md.push(`| ${precisions.length > 1 ? `${setting} (${model.precision})` : setting} | ${sizeName} | ${((100 * iou) / K).toFixed(1)} | ${(tokens / n).toFixed(0)} | ${(perBlock / n).toFixed(0)} | ` +
        `${tokenCut} | ${(gflops / n).toFixed(1)} | ${flopCut} | ${(ms / n).toFixed(0)} |`);
    }
  }
  model.dispose();
  }
  if (markdown) fs.writeFileSync(markdown, md.join('\n') + '\n');
})();
