// Writes weights/default: the small, UNTRAINED stand-in model that loadModel() loads until the trained
// default model ships. Random weights (seeded, so the file is reproducible), CamVid's classes and
// palette, float16. Run: node --import tsx scripts/make-untrained-model.ts
import * as fs from 'node:fs';
import * as path from 'node:path';

import { randomVit } from '../test/helpers/random';

const classes = ['sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign', 'fence', 'car', 'pedestrian', 'bicyclist'];
const palette = [
  [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
  [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
];
const { config, buffer } = randomVit({
  embedDim: 64,
  depth: 4,
  numHeads: 2,
  imgSize: [512, 512],
  classNames: classes,
  inputSize: 512,
  dtype: 'F16',
  seed: 20261123,
  extraConfig: { palette, untrained: true, note: 'random weights: a stand-in until the trained default model ships' },
});
const dir = path.join(__dirname, '..', 'weights', 'default');
fs.mkdirSync(dir, { recursive: true });
// The directory form: config.json beside model.safetensors (the file also carries the config).
fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 1) + '\n');
fs.writeFileSync(path.join(dir, 'model.safetensors'), buffer);
console.log(`wrote ${dir} (${buffer.length} bytes)`);
