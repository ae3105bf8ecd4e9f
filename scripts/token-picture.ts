// Draws where the tokens went (lib/pictures.ts tokenPicture): superpatch outlines over the photo at
// the inference size, early-exit tokens tinted by their exit block, and a legend strip.
//   node --import tsx scripts/token-picture.ts photo.jpg out.png [size=1024] [colorTau textureTau]
import * as fs from 'node:fs';

import { loadModel } from '../lib/index';
import { tokenPicture } from '../lib/pictures';

const [file, out, sizeArg, ct, tt] = process.argv.slice(2);
if (!file || !out) {
  console.error('usage: node --import tsx scripts/token-picture.ts photo.jpg out.png [size=1024] [colorTau textureTau]');
  process.exit(2);
}
const size = Number(sizeArg ?? 1024);

(async () => {
  const model = await loadModel(undefined, { device: 'cpu' });
  const merge = ct ? { colorTau: Number(ct), textureTau: Number(tt) } : undefined;
  const r = await model.segment(file, { size, merge });
  fs.writeFileSync(out, await tokenPicture(file, r, { size, patchSize: model.config.patchSize, depth: model.config.depth }));
  const { gh, gw } = r.tokenMap;
  console.log(`${file}: ${r.stats.tokens.dense} -> ${r.stats.tokens.input} tokens (${JSON.stringify(r.stats.tokens.perLevel)}), grid ${gh}x${gw}, wrote ${out}`);
  model.dispose();
})();
