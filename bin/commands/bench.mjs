// step-seg bench: dense against STEP on the demo image, per size.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

import { api, checkDevice, fmtMs, median, modelSource, positiveInt, root } from './shared.mjs';

export const help = `Usage: step-seg bench [options]

Times the model on this machine, dense (merge off, prune off) against STEP (the model's defaults),
on the bundled demo image, and prints the median time, tokens and GFLOPs per size.

Options:
  -m, --model PATH         model, or default (the bundled model, the default)
  -d, --device DEVICE      auto | cpu | cuda (default auto)
      --image FILE         image (default: the bundled assets/demo-rocket.jpg)
      --sizes LIST         comma-separated long sides (default 512,1024)
      --runs N             timed runs per case, after one warm-up (default 5)
      --verbose            stack traces on errors
  -h, --help               this help`;

export const options = {
  model: { type: 'string', short: 'm' },
  device: { type: 'string', short: 'd' },
  image: { type: 'string' },
  sizes: { type: 'string' },
  runs: { type: 'string' },
};

// ---------------------------------------------------------------------------------------------------
// bench

export async function run(values) {
  const runs = positiveInt(values.runs, '--runs') ?? 5;
  const sizes = (values.sizes ?? '512,1024').split(',').map((s) => positiveInt(s.trim(), '--sizes'));
  const image = values.image ?? path.join(root, 'assets', 'demo-rocket.jpg');
  const { loadModel, runtimeInfo, defaultModelPath } = await api();
  const bytes = await fsp.readFile(image).catch((err) => {
    throw new Error(`cannot read ${image}: ${err.message}`);
  });
  const source = modelSource(values.model, defaultModelPath);
  const model = await loadModel(source, { device: checkDevice(values.device) });
  const info = runtimeInfo();
  process.stdout.write(
    `bench: ${source === defaultModelPath ? 'the bundled model' : source} on ${path.relative(process.cwd(), image) || image}, ${model.device} ` +
      `(${info.gemmKernel}, ${info.threads} threads), median of ${runs} runs after a warm-up\n\n`,
  );
  const header = `${'size'.padStart(5)}  ${'mode'.padEnd(6)} ${'ms'.padStart(9)} ${'tokens'.padStart(8)} ${'GFLOPs'.padStart(8)}`;
  process.stdout.write(header + '\n');
  const modes = [
    ['dense', { merge: false, prune: false }],
    ['STEP', {}],
  ];
  try {
    for (const size of sizes) {
      const medians = {};
      for (const [name, opts] of modes) {
        const o = { ...opts, size };
        await model.segment(bytes, o); // warm-up
        const times = [];
        let last;
        for (let r = 0; r < runs; r++) {
          const t0 = performance.now();
          last = await model.segment(bytes, o);
          times.push(performance.now() - t0);
        }
        medians[name] = median(times);
        const t = last.stats.tokens;
        const active = t.perBlock.length ? Math.round(t.perBlock.reduce((a, b) => a + b, 0) / t.perBlock.length) : t.input;
        process.stdout.write(
          `${String(size).padStart(5)}  ${name.padEnd(6)} ${fmtMs(medians[name]).padStart(9)} ${String(active).padStart(8)} ${last.stats.gflops.toFixed(2).padStart(8)}\n`,
        );
      }
      process.stdout.write(`${''.padStart(5)}  ${'speedup'.padEnd(6)} ${(medians.dense / medians.STEP).toFixed(2).padStart(8)}x\n`);
    }
  } finally {
    model.dispose();
  }
  process.stdout.write('\ntokens: mean tokens per block (after merging and pruning); ms: the whole segment() call, decode included\n');
  return 0;
}
