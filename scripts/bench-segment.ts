/**
 * bench-segment.ts: the segment() section of scripts/bench-cpu.ts. The bundled model (weights/default)
 * segments each photo of ../shared/images at a long side of 1024, from the encoded JPEG bytes to the
 * labels, dense ({ merge: false, prune: false }) and with STEP (the model's defaults), beside
 * onnxruntime-node's dense forward of the same network on the same input size:
 *
 *   - the ONNX graph is the bundled model itself (scripts/export_vit_onnx.py --config --resample --head:
 *     its ViT, its position embeddings resampled to the photo's patch grid as the engine resamples them,
 *     and its linear head), from the bundled float16 weights widened to float32; the exit heads are not
 *     in it (a dense forward has no use for them);
 *   - its input is the photo resized by sharp and normalised with the model's mean and std, zero-padded
 *     to the patch grid, as a float32 tensor: ort's time is the forward alone, no decoding, no upsampling
 *     to the photo and no argmax, all of which segment()'s time includes;
 *   - the engine's forwardFeatures() on that same tensor must give ort's tokens (relative L2 < 1e-4).
 *
 * STEP's own costs, from stats.ms of the STEP runs (median per stage): score and select (merging),
 * embed (the superpatch embedding: the resampling gather and the patch-embedding GEMM, over fewer
 * tokens than dense), halt (exit heads, halting, compaction), unshare, upsample (to the photo, with the
 * argmax); their sum against the dense forward (embed + encoder + head of the dense runs).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';

import { cpuMeter, fmt, fmtExp, median, ortSession, printTable, relL2, timeRuns, type Ort } from './bench-common';

type Lib = typeof import('../lib/index');
type Model = import('../lib/index').Model;
type Stats = import('../lib/index').SegmentStats;

export interface SegmentArgs {
  photos: string; // folder of photos
  longSide: number;
  runs: number;
  warmup: number;
  threads: number;
  precision?: string; // passed as loadModel's `precision` when given
  python: string; // with torch, for the export; undefined torch: no ort rows
  haveTorch: boolean;
  onnxCache: string; // folder for the exported graphs, one per input size
  quick: boolean; // the first photo only
}

export interface SegmentRow {
  photo: string;
  threads: number;
  width: number; // resized, before the padding to the patch grid
  height: number;
  denseTokens: number;
  stepTokens: number; // mean tokens per block
  denseGflops: number;
  stepGflops: number;
  denseMs: number; // whole segment() calls, medians
  stepMs: number;
  ortMs?: number;
  ortErr?: number; // the engine's fp32 tokens against onnxruntime's
  bf16Err?: number; // the timed model's tokens against onnxruntime's, where it runs bf16
  precision: string; // what the engine ran (model.precision)
  denseForwardMs: number; // embed + encoder + head of the dense calls
  costs: Record<string, number>; // STEP's own stages, ms
  busy: number;
}

export const kStepCosts = ['score', 'select', 'embed', 'halt', 'unshare', 'upsample'] as const;
const kCostLabel: Record<string, string> = { halt: 'halt+compact', upsample: 'upsample+argmax' };
const kImage = /\.(jpe?g|png|webp)$/i;
// The export check: the engine's float32 tokens against onnxruntime's (a wrong export is off by O(1)).
// A bf16 model's own tokens are reported beside, against the same, with no limit: how far bf16 moves
// this trained model's features (0.9e-2 to 1.3e-2 on the shared photos) is a figure, not a check.
const kMaxRelL2 = 1e-4;

// Median per stage over the runs' stats.ms.
function stageMedians(all: Stats[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of Object.keys(all[0].ms)) out[key] = median(all.map((s) => (s.ms as Record<string, number>)[key] ?? 0));
  return out;
}

// The photo as the ONNX graph's input: (1, 3, H, W) float32, normalised, zero-padded to the grid.
async function pixelsOf(bytes: Buffer, w: number, h: number, H: number, W: number, mean: number[], std: number[]) {
  const { data } = await sharp(bytes).rotate().resize(w, h, { fit: 'fill' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const out = new Float32Array(3 * H * W);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let c = 0; c < 3; c++) out[(c * H + y) * W + x] = (data[(y * w + x) * 3 + c] / 255 - mean[c]) / std[c];
  return out;
}

// The bundled model as ONNX for an H x W input, exported once per size into the cache folder.
function exportOnnx(lib: Lib, args: SegmentArgs, H: number, W: number): string | undefined {
  const onnx = path.join(args.onnxCache, `default-${H}x${W}.onnx`);
  if (fs.existsSync(onnx)) return onnx;
  const dir = lib.defaultModelPath, exporter = path.join(__dirname, 'export_vit_onnx.py');
  const py = [exporter, path.join(dir, 'model.safetensors'), onnx, String(H), String(W), '--config', path.join(dir, 'config.json'), '--resample', '--head'];
  const r = spawnSync(args.python, py, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status === 0) return onnx;
  console.log(`  export_vit_onnx.py failed (status ${r.status}):\n${r.stderr}`);
  return undefined;
}

async function timeSegment(model: Model, bytes: Buffer, opts: object, args: SegmentArgs) {
  const stats: Stats[] = [];
  const t = await timeRuns(args.warmup, args.runs, async () => {
    const r = await model.segment(bytes, { size: args.longSide, ...opts });
    stats.push(r.stats);
    return r;
  });
  return { ms: t.ms, runs: t.runs, stats: stats.slice(args.warmup), stages: stageMedians(stats.slice(args.warmup)) };
}

/** The section: one row per photo, printed as it goes. An absent photo folder is said and skipped. */
export async function benchSegment(lib: Lib, ort: Ort | undefined, args: SegmentArgs): Promise<SegmentRow[]> {
  if (!fs.existsSync(args.photos)) {
    console.log(`\nsegment(): skipped, ${args.photos} is absent (--photos DIR: a folder of JPEG or PNG photos)`);
    return [];
  }
  let photos = fs.readdirSync(args.photos).filter((f) => kImage.test(f)).sort();
  if (args.quick) photos = photos.slice(0, 1);
  const model: Model = await lib.loadModel(lib.defaultModelPath, { device: 'cpu', ...(args.precision ? { precision: args.precision as 'fp32' | 'bf16' } : {}) });
  // the export check needs float32 tokens: a float32 twin where the timed model runs bf16
  const reference = model.precision === 'fp32' ? model : await lib.loadModel(lib.defaultModelPath, { device: 'cpu', precision: 'fp32' });
  const c = model.config, P = c.patchSize;
  console.log(
    `\nsegment() of the bundled model (${c.embedDim}-wide, ${c.depth} blocks, ${c.numClasses} classes), long side ${args.longSide}, ` +
      `${args.runs} runs after ${args.warmup} warm-up, precision ${model.precision}${args.precision ? '' : " (the library's default)"}; onnxruntime float32`,
  );
  const rows: SegmentRow[] = [];
  try {
    for (const name of photos) {
      const bytes = fs.readFileSync(path.join(args.photos, name));
      const meta = await sharp(bytes).metadata();
      const upright = (meta.orientation ?? 1) >= 5;
      const [w0, h0] = upright ? [meta.height!, meta.width!] : [meta.width!, meta.height!];
      const scale = args.longSide / Math.max(w0, h0);
      const w = Math.max(1, Math.round(w0 * scale)), h = Math.max(1, Math.round(h0 * scale));
      const H = Math.ceil(h / P) * P, W = Math.ceil(w / P) * P;
      console.log(`\n${name}: ${w0} x ${h0} -> ${w} x ${h} (grid ${H / P} x ${W / P})`);
      const onnx = ort && args.haveTorch ? exportOnnx(lib, args, H, W) : undefined;

      const meter = cpuMeter();
      const dense = await timeSegment(model, bytes, { merge: false, prune: false }, args);
      const step = await timeSegment(model, bytes, {}, args);
      console.log(`  segment() dense ${dense.ms.toFixed(0)} ms (runs ${dense.runs.map((x) => x.toFixed(0)).join(' ')}), STEP ${step.ms.toFixed(0)} ms (runs ${step.runs.map((x) => x.toFixed(0)).join(' ')})`);
      let ortMs: number | undefined, ortErr: number | undefined, bf16Err: number | undefined;
      if (ort && onnx) {
        const pixels = await pixelsOf(bytes, w, h, H, W, c.pixelMean, c.pixelStd);
        const dims = [1, 3, H, W];
        const fp32 = await reference.forwardFeatures({ data: pixels, dims });
        const session = await ortSession(ort, onnx, args.threads);
        const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', pixels, dims) };
        const t = await timeRuns(args.warmup, args.runs, () => session.run(feeds));
        await session.release();
        ortMs = t.ms;
        const ortTokens = t.out.tokens.data as Float32Array;
        ortErr = relL2(fp32.data as Float32Array, ortTokens);
        console.log(`  onnxruntime forward ${ortMs.toFixed(0)} ms (runs ${t.runs.map((x) => x.toFixed(0)).join(' ')}); relative L2 of the tokens vs forwardFeatures() in fp32: ${ortErr.toExponential(2)} ${ortErr < kMaxRelL2 ? 'ok' : `FAILS (limit ${kMaxRelL2})`}`);
        if (reference !== model) {
          bf16Err = relL2((await model.forwardFeatures({ data: pixels, dims })).data as Float32Array, ortTokens);
          console.log(`  the ${model.precision} tokens against onnxruntime's: relative L2 ${bf16Err.toExponential(2)}`);
        }
      }
      const last = step.stats[step.stats.length - 1];
      const perBlock = last.tokens.perBlock;
      const d = dense.stages;
      rows.push({
        photo: name,
        threads: args.threads,
        width: w,
        height: h,
        denseTokens: last.tokens.dense,
        stepTokens: perBlock.length ? perBlock.reduce((a, b) => a + b, 0) / perBlock.length : last.tokens.input,
        denseGflops: dense.stats[0].gflops,
        stepGflops: median(step.stats.map((s) => s.gflops)),
        denseMs: dense.ms,
        stepMs: step.ms,
        ortMs,
        ortErr,
        bf16Err,
        precision: model.precision,
        denseForwardMs: (d.embed ?? 0) + (d.encoder ?? 0) + (d.head ?? 0),
        costs: Object.fromEntries(kStepCosts.map((k) => [k, step.stages[k] ?? 0])),
        busy: meter(),
      });
    }
  } finally {
    model.dispose();
    if (reference !== model) reference.dispose();
  }
  return rows;
}

/** Whether every row's engine and ort tokens agree. */
export const segmentRowsAgree = (rows: SegmentRow[]) => rows.every((r) => r.ortErr === undefined || r.ortErr < kMaxRelL2);

export function printSegmentTables(rows: SegmentRow[]): void {
  if (!rows.length) return;
  console.log('\nsegment(), JPEG bytes to labels (medians), beside the onnxruntime-node dense forward of the same network on a float32 tensor:');
  printTable(
    ['photo', 'input', 'threads', 'precision', 'tokens dense', 'tokens STEP', 'GFLOPs dense', 'GFLOPs STEP', 'segment dense ms', 'segment STEP ms', 'ort fwd ms', 'ort / STEP', 'ort / dense', 'relL2 ort fp32', 'relL2 ort bf16', 'busy'],
    rows.map((r) => [
      r.photo,
      `${r.width}x${r.height}`,
      String(r.threads),
      r.precision,
      String(r.denseTokens),
      r.stepTokens.toFixed(0),
      fmt(r.denseGflops, 1),
      fmt(r.stepGflops, 1),
      fmt(r.denseMs, 0),
      fmt(r.stepMs, 0),
      fmt(r.ortMs, 0),
      r.ortMs === undefined ? '-' : `${(r.ortMs / r.stepMs).toFixed(2)}x`,
      r.ortMs === undefined ? '-' : `${(r.ortMs / r.denseMs).toFixed(2)}x`,
      fmtExp(r.ortErr),
      fmtExp(r.bf16Err),
      `${(100 * r.busy).toFixed(0)}%`,
    ]),
    2,
  );
  console.log('\nSTEP\'s own costs (ms, medians of the STEP runs) against the dense forward (embed + encoder + head of the dense runs):');
  printTable(
    ['photo', 'threads', ...kStepCosts.map((k) => kCostLabel[k] ?? k), 'sum', 'dense fwd', 'sum / dense fwd'],
    rows.map((r) => {
      const sum = kStepCosts.reduce((a, k) => a + r.costs[k], 0);
      return [r.photo, String(r.threads), ...kStepCosts.map((k) => fmt(r.costs[k], 1)), fmt(sum, 1), fmt(r.denseForwardMs, 0), `${((100 * sum) / r.denseForwardMs).toFixed(1)}%`];
    }),
    1,
  );
}
