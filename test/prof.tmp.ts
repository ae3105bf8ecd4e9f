import { loadModel } from '../lib/index';
import { randomVit, randn, rng } from './helpers/random';
(async () => {
  const size = Number(process.argv[2] ?? 512);
  const { buffer } = randomVit({ embedDim: 384, depth: 12, numHeads: 6, imgSize: [size, size] });
  const m = await loadModel(buffer, { device: 'cpu' });
  const x = randn(3 * size * size, rng(1));
  for (let i = 0; i < 4; i++) { const t = performance.now(); const r = await m.forwardFeatures({ data: x, dims: [1, 3, size, size] }); console.log((performance.now() - t).toFixed(0), JSON.stringify(r.stats.ms)); }
})();
