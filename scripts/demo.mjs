#!/usr/bin/env node
// The main job on the bundled defaults: segment an image with the bundled model and write the label
// map as a PNG in the model's colours, and the colours over the photo (<out>.overlay.png, the name the
// CLI's --overlay gives).
//   npm run demo                          # assets/demo-rocket.jpg -> demo-labels.png, demo-labels.overlay.png
//   npm run demo -- photo.jpg out.png [size]
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

import { colorize, loadModel, overlay } from '../dist/index.mjs';

const image = process.argv[2] ?? fileURLToPath(new URL('../assets/demo-rocket.jpg', import.meta.url));
const out = process.argv[3] ?? 'demo-labels.png';
const size = process.argv[4] ? Number(process.argv[4]) : undefined;

const model = await loadModel();
const result = await model.segment(image, size ? { size } : {});
await writeFile(out, await colorize(result, model.config.palette));
const overlayOut = out.replace(/\.png$/i, '') + '.overlay.png';
await writeFile(overlayOut, await overlay(image, result, model.config.palette, { alpha: 0.5 }));
const counts = new Map();
for (const l of result.labels) counts.set(l, (counts.get(l) ?? 0) + 1);
const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 3);
console.log(`${image}: ${result.width} x ${result.height}, ${result.stats.tokens.input} tokens, ` +
  `${result.stats.gflops.toFixed(2)} GFLOPs, ${result.stats.ms.total.toFixed(0)} ms on ${result.stats.device}`);
console.log(`most pixels: ${top.map(([l, n]) => `${result.classes[l]} ${((100 * n) / result.labels.length).toFixed(0)}%`).join(', ')}`);
console.log(`wrote ${out} and ${overlayOut}`);
model.dispose();
