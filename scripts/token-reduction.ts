// Mean token reduction of superpatch merging over a folder of real images, per scorer and threshold
// setting, at 512, 768 and 1024 px (long side).
//   node --import tsx scripts/token-reduction.ts [folder=../shared/images] [--sizes 512,768,1024]
// Prints one row per (setting, size): images, mean dense tokens, mean merged tokens, reduction, and
// the mean share of tokens of each window size. The learned scorer runs when the model has policy
// weights (the bundled model's config uses it; --model DIR for another).
import * as fs from 'node:fs';
import * as path from 'node:path';

import { loadModel, type SegmentOptions } from '../lib/index';

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const sizes = (flag('--sizes') ?? '512,768,1024').split(',').map(Number);
const modelDir = flag('--model');
const folder = args[0] ?? path.join(__dirname, '..', '..', 'shared', 'images');
if (!fs.existsSync(folder)) {
  console.log(`no images: ${folder} does not exist (pass a folder of photos)`);
  process.exit(0);
}
const files = fs.readdirSync(folder).filter((f) => /\.(jpe?g|png|webp)$/i.test(f)).map((f) => path.join(folder, f));

const settings: [string, SegmentOptions['merge']][] = [
  ['similarity strict [0.9, 0.8, 0.7]', { policy: 'similarity', thresholds: [0.9, 0.8, 0.7] }],
  ['similarity default', { policy: 'similarity' }],
  ['similarity loose [0.6, 0.5, 0.4]', { policy: 'similarity', thresholds: [0.6, 0.5, 0.4] }],
];

(async () => {
  const model = await loadModel(modelDir, { device: 'cpu' });
  if (model.config.merge && model.config.merge.policy === 'learned') settings.push(['learned (model config)', {}]);
  console.log(`${files.length} images from ${folder}`);
  console.log('setting                              size  dense  merged  reduction  8x8  4x4  2x2  1x1');
  for (const [name, merge] of settings)
    for (const size of sizes) {
      let dense = 0, input = 0;
      const share: Record<number, number> = {};
      for (const file of files) {
        const r = await model.segment(file, { size, merge: merge && Object.keys(merge).length ? merge : undefined });
        dense += r.stats.tokens.dense;
        input += r.stats.tokens.input;
        for (const [side, n] of Object.entries(r.stats.tokens.perLevel)) share[+side] = (share[+side] ?? 0) + n / r.stats.tokens.input;
      }
      const n = files.length;
      const pct = (side: number) => `${(((share[side] ?? 0) / n) * 100).toFixed(0)}%`.padStart(4);
      console.log(
        `${name.padEnd(36)} ${String(size).padStart(4)} ${(dense / n).toFixed(0).padStart(6)} ${(input / n).toFixed(0).padStart(7)} ` +
          `${(dense / input).toFixed(2).padStart(9)}x ${pct(8)} ${pct(4)} ${pct(2)} ${pct(1)}`,
      );
    }
  model.dispose();
})();
