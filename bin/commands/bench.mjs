// step-seg bench: dense against STEP, per image and size, with STEP's own costs per stage.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

import { expandInputs } from './inputs.mjs';
import { UsageError, api, checkDevice, fmtMs, median, modelSource, positiveInt, root, shown } from './shared.mjs';

export const help = `Usage: step-seg bench [options]

Times the whole segment() call on this machine (the encoded image to labels), dense (merge off,
prune off) against STEP (the model's defaults), and prints per image and size the median time,
tokens and GFLOPs, and for STEP its own costs per stage: window scoring, selection, superpatch
embedding, halting and compaction, unsharing, upsampling with the argmax, and their sum as a share
of the dense forward (embed + encoder + head of the dense calls).

Options:
  -m, --model PATH         model, or default (the bundled model, the default)
  -d, --device DEVICE      auto | cpu | cuda (default auto)
      --image FILE         an image; may be given several times (default: the bundled assets/demo-rocket.jpg)
      --images DIR         every image in a folder (recursive), e.g. your own photos
      --sizes LIST         comma-separated long sides (default 512,1024)
      --runs N             timed runs per case, after one warm-up (default 5)
      --verbose            stack traces on errors
  -h, --help               this help

Threads: the CPU engine uses STEP_SEG_NUM_THREADS threads (default: all cores).`;

export const options = {
  model: { type: 'string', short: 'm' },
  device: { type: 'string', short: 'd' },
  image: { type: 'string', multiple: true },
  images: { type: 'string' },
  sizes: { type: 'string' },
  runs: { type: 'string' },
};

// STEP's own stages in stats.ms, as the table names them; on the GPU some are not reported.
const kCosts = [
  ['score', 'score'],
  ['select', 'select'],
  ['embed', 'embed'],
  ['halt', 'halt+compact'],
  ['unshare', 'unshare'],
  ['upsample', 'upsample+argmax'],
];
// The dense forward: patch embedding, the encoder (or its block groups), the head.
const denseForward = (ms) => Object.entries(ms).reduce((s, [k, v]) => s + (k === 'embed' || k === 'head' || k === 'encoder' || k.startsWith('blocks ') ? v : 0), 0);

// Median per stage over the runs' stats.ms.
function stageMedians(all) {
  const keys = new Set(all.flatMap((ms) => Object.keys(ms)));
  return Object.fromEntries([...keys].map((k) => [k, median(all.map((ms) => ms[k] ?? 0))]));
}

async function images(values) {
  const inputs = [...(values.image ?? []), ...(values.images === undefined ? [] : [values.images])];
  if (!inputs.length) return [path.join(root, 'assets', 'demo-rocket.jpg')];
  const { files, problems } = await expandInputs(inputs);
  if (problems.length) throw new UsageError(`${problems[0].input}: ${problems[0].message}`);
  return files;
}

// ---------------------------------------------------------------------------------------------------
// bench

export async function run(values) {
  const runs = positiveInt(values.runs, '--runs') ?? 5;
  const sizes = (values.sizes ?? '512,1024').split(',').map((s) => positiveInt(s.trim(), '--sizes'));
  const files = await images(values);
  const { loadModel, runtimeInfo, defaultModelPath } = await api();
  const source = modelSource(values.model, defaultModelPath);
  const model = await loadModel(source, { device: checkDevice(values.device) });
  const info = runtimeInfo();
  const what = files.length === 1 ? shown(files[0]) : `${files.length} images`;
  process.stdout.write(
    `bench: ${source === defaultModelPath ? 'the bundled model' : source} on ${what}, ${model.device} ` +
      `(${info.gemmKernel}, ${info.threads} threads), median of ${runs} runs after a warm-up\n`,
  );
  const header = `${'size'.padStart(5)}  ${'mode'.padEnd(7)} ${'ms'.padStart(9)} ${'tokens'.padStart(8)} ${'GFLOPs'.padStart(8)}`;
  const costHeader = `${''.padStart(5)}  ${'STEP ms'.padEnd(7)} ${kCosts.map(([, label]) => label).join(' ')} ${'sum'.padStart(6)}  (share of the dense forward)`;
  const modes = [
    ['dense', { merge: false, prune: false }],
    ['STEP', {}],
  ];
  try {
    for (const file of files) {
      const bytes = await fsp.readFile(file).catch((err) => {
        throw new Error(`cannot read ${file}: ${err.message}`);
      });
      process.stdout.write(`\n${shown(file)}\n${header}\n`);
      for (const size of sizes) {
        const medians = {}, stages = {};
        for (const [name, opts] of modes) {
          const o = { ...opts, size };
          await model.segment(bytes, o); // warm-up
          const times = [], ms = [];
          let last;
          for (let r = 0; r < runs; r++) {
            const t0 = performance.now();
            last = await model.segment(bytes, o);
            times.push(performance.now() - t0);
            ms.push(last.stats.ms);
          }
          medians[name] = median(times);
          stages[name] = stageMedians(ms);
          const t = last.stats.tokens;
          const active = t.perBlock.length ? Math.round(t.perBlock.reduce((a, b) => a + b, 0) / t.perBlock.length) : t.input;
          process.stdout.write(
            `${String(size).padStart(5)}  ${name.padEnd(7)} ${fmtMs(medians[name]).padStart(9)} ${String(active).padStart(8)} ${last.stats.gflops.toFixed(2).padStart(8)}\n`,
          );
        }
        process.stdout.write(`${''.padStart(5)}  ${'speedup'.padEnd(7)} ${(medians.dense / medians.STEP).toFixed(2).padStart(8)}x\n`);
        const step = stages.STEP, costs = kCosts.map(([k]) => step[k]);
        const sum = costs.reduce((a, v) => a + (v ?? 0), 0), dense = denseForward(stages.dense);
        const cells = kCosts.map(([, label], i) => (costs[i] === undefined ? '-' : fmtMs(costs[i])).padStart(label.length));
        process.stdout.write(`${costHeader}\n${''.padStart(5)}  ${''.padEnd(7)} ${cells.join(' ')} ${fmtMs(sum).padStart(6)}  (${dense > 0 ? ((100 * sum) / dense).toFixed(1) : '-'}% of ${fmtMs(dense)} ms)\n`);
      }
    }
  } finally {
    model.dispose();
  }
  process.stdout.write(
    '\ntokens: mean tokens per block (after merging and pruning); ms: the whole segment() call, decode included;\n' +
      "STEP ms: medians of the STEP calls' stats.ms stages ('-': not timed on this device)\n",
  );
  return 0;
}
