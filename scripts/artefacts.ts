// Where STEP's labels leave the dense model's (issue 17: block artefacts), photo by photo.
//   node --import tsx scripts/artefacts.ts [--size 1024] [--out DIR] [--model DIR] [photo ...]
//        (default photos: ../shared/images/* and assets/demo-rocket.jpg)
// For each photo it segments dense ({ merge: false, prune: false }) and with merge only
// ({ prune: false }), prune only ({ merge: false }) and both ({}: the model's defaults), with the label
// map at the inference size (outputSize = size, so output pixel (x, y) lies in patch cell
// (y / P, x / P)), and prints the share of pixels whose label differs from dense. The differing pixels
// are then split by the token that carried their cell: halted at an exit or not, and its side S; and,
// for S > 1, whether the pixel lies in the outer ring of one cell inside the superpatch (the border,
// where a flat copy of one token's logits meets its neighbours) or deeper in. --out DIR writes per
// photo and setting a PNG: dense labels | STEP labels | the photo with differing pixels painted in
// STEP's colour, and the token picture (lib/pictures.ts tokenPicture).
import * as fs from 'node:fs';
import * as path from 'node:path';

import sharp from 'sharp';

import { colorize, loadModel, tokenPicture, type SegmentOptions, type SegmentResult } from '../lib/index';

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : fallback;
};
const size = Number(flag('--size', '1024'));
const outDir = flag('--out', '');
const modelDir = flag('--model', '') || undefined; // default: the bundled model
const root = path.join(__dirname, '..');
const shared = path.join(root, '..', 'shared', 'images');
const photos = args.length
  ? args
  : [
      ...(fs.existsSync(shared) ? fs.readdirSync(shared).filter((f) => /\.jpe?g$/.test(f)).map((f) => path.join(shared, f)) : []),
      path.join(root, 'assets', 'demo-rocket.jpg'),
    ];
const settings: [string, SegmentOptions][] = [
  ['merge', { prune: false }],
  ['prune', { merge: false }],
  ['merge+prune', {}],
];

/** Shares (of the differing pixels) by the kind of token that carried the pixel's cell. */
function attribute(r: SegmentResult, dense: SegmentResult, depth: number, P: number) {
  const { gw, index, size: side, exitLayer } = r.tokenMap;
  const kinds = new Map<string, number>();
  let differ = 0;
  for (let y = 0; y < r.height; y++)
    for (let x = 0; x < r.width; x++) {
      const i = y * r.width + x;
      if (r.labels[i] === dense.labels[i]) continue;
      differ++;
      const cy = Math.floor(y / P), cx = Math.floor(x / P), cell = cy * gw + cx, S = side[cell];
      let where = `S${S}`;
      if (S > 1) {
        // the token's top-left cell: the first cell of the grid with the same token index
        let ty = cy, tx = cx;
        while (ty > 0 && index[(ty - 1) * gw + cx] === index[cell]) ty--;
        while (tx > 0 && index[cy * gw + tx - 1] === index[cell]) tx--;
        const inner = Math.min(y - ty * P, (ty + S) * P - 1 - y, x - tx * P, (tx + S) * P - 1 - x);
        where += inner < P ? ' border' : ' inside';
      }
      const key = `${exitLayer[cell] < depth ? `halted@${exitLayer[cell]}` : 'final'} ${where}`;
      kinds.set(key, (kinds.get(key) ?? 0) + 1);
    }
  return { differ, kinds };
}

/** The photo at the label map's size, darkened, with pixels that differ from dense in STEP's colour. */
async function diffPicture(file: string, r: SegmentResult, dense: SegmentResult, palette: readonly (readonly [number, number, number])[]) {
  const photo = await sharp(file).rotate().resize(r.width, r.height, { fit: 'fill' }).removeAlpha().raw().toBuffer();
  for (let i = 0; i < r.labels.length; i++) {
    const c = r.labels[i] !== dense.labels[i] ? palette[r.labels[i]] : null;
    for (let k = 0; k < 3; k++) photo[3 * i + k] = c ? c[k] : photo[3 * i + k] >> 2;
  }
  return sharp(photo, { raw: { width: r.width, height: r.height, channels: 3 } }).png().toBuffer();
}

(async () => {
  const model = await loadModel(modelDir, { device: 'cpu' });
  const { palette, depth, patchSize } = model.config;
  if (outDir) fs.mkdirSync(outDir, { recursive: true });
  console.log(`size ${size}, precision ${model.precision}; differ: % of pixels whose label differs from dense`);
  const totals = new Map<string, { differ: number; pixels: number }>();
  for (const file of photos) {
    const name = path.basename(file).replace(/\.[^.]+$/, '');
    const dense = await model.segment(file, { size, outputSize: size, merge: false, prune: false });
    for (const [setting, options] of settings) {
      const r = await model.segment(file, { ...options, size, outputSize: size });
      const { differ, kinds } = attribute(r, dense, depth, patchSize);
      const t = totals.get(setting) ?? { differ: 0, pixels: 0 };
      totals.set(setting, { differ: t.differ + differ, pixels: t.pixels + r.labels.length });
      const blocks = r.stats.tokens.perBlock, perBlock = blocks.reduce((a, b) => a + b, 0) / blocks.length;
      const split = [...kinds].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${((100 * n) / Math.max(differ, 1)).toFixed(0)}%`);
      console.log(
        `${name.padEnd(24)} ${setting.padEnd(12)} differ ${((100 * differ) / r.labels.length).toFixed(2).padStart(6)}%  ` +
          `tokens/block ${perBlock.toFixed(0)} of ${r.stats.tokens.dense}  | ${split.slice(0, 6).join(', ')}`,
      );
      if (!outDir) continue;
      const parts = [await colorize(dense, palette), await colorize(r, palette), await diffPicture(file, r, dense, palette)];
      const w = r.width, gap = 8;
      const strip = sharp({ create: { width: 3 * w + 2 * gap, height: r.height, channels: 3, background: '#fff' } })
        .composite(parts.map((input, i) => ({ input, left: i * (w + gap), top: 0 })));
      fs.writeFileSync(path.join(outDir, `${name}.${setting}.labels.png`), await strip.png().toBuffer());
      fs.writeFileSync(path.join(outDir, `${name}.${setting}.tokens.png`), await tokenPicture(file, r));
    }
  }
  for (const [setting, t] of totals) console.log(`all photos ${setting.padEnd(12)} differ ${((100 * t.differ) / t.pixels).toFixed(2)}%`);
  model.dispose();
})();
