// Draws where the tokens went: superpatch outlines over the (resized) photo, merged windows tinted by
// size (8x8 blue, 4x4 green, 2x2 yellow, 1x1 untinted).
//   node --import tsx scripts/token-picture.ts photo.jpg out.png [size=1024] [colorTau textureTau]
import * as fs from 'node:fs';

import sharp from 'sharp';

import { loadModel } from '../lib/index';
import { resizedSize } from '../lib/image';

const [file, out, sizeArg, ct, tt] = process.argv.slice(2);
const size = Number(sizeArg ?? 1024);
const tint: Record<number, [number, number, number]> = { 8: [40, 90, 255], 4: [40, 220, 80], 2: [250, 220, 40] };

(async () => {
  const model = await loadModel(undefined, { device: 'cpu' });
  const merge = ct ? { colorTau: Number(ct), textureTau: Number(tt) } : undefined;
  const r = await model.segment(file, { size, merge });
  const [w, h] = resizedSize(r.width, r.height, size);
  const rgb = await sharp(file).rotate().removeAlpha().resize(w, h, { fit: 'fill' }).raw().toBuffer();
  const { gh, gw, index, size: side } = r.tokenMap;
  const P = model.config.patchSize;
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const cell = Math.floor(y / P) * gw + Math.floor(x / P), s = side[cell], i = 3 * (y * w + x);
      const t = tint[s];
      if (t) for (let c = 0; c < 3; c++) rgb[i + c] = Math.round(0.6 * rgb[i + c] + 0.4 * t[c]);
      // an outline where the pixel's token differs from its right or lower neighbour's
      const right = x + 1 < w ? Math.floor(y / P) * gw + Math.floor((x + 1) / P) : cell;
      const down = y + 1 < h ? Math.floor((y + 1) / P) * gw + Math.floor(x / P) : cell;
      if (index[right] !== index[cell] || index[down] !== index[cell]) rgb[i] = rgb[i + 1] = rgb[i + 2] = 255;
    }
  await sharp(rgb, { raw: { width: w, height: h, channels: 3 } }).png().toFile(out);
  console.log(`${file}: ${r.stats.tokens.dense} -> ${r.stats.tokens.input} tokens (${JSON.stringify(r.stats.tokens.perLevel)}), grid ${gh}x${gw}, wrote ${out}`);
  model.dispose();
})();
