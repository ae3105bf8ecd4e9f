// step-seg info: a model's config, classes, parameters, merging and exit layers.
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

import { UsageError, api, kLicence, modelSource, root, weightsFile } from './shared.mjs';

export const help = `Usage: step-seg info [model] [options]

Prints a model's config, classes, parameter count (from the safetensors header), merging settings,
exit layers and licence. model: a directory with config.json + model.safetensors, a .safetensors
file with its config in __metadata__, or default (the bundled model, the default; ./default for a
folder of that name).

Options:
      --json               the same as JSON
      --verbose            stack traces on errors
  -h, --help               this help`;

export const options = { json: { type: 'boolean' } };

// ---------------------------------------------------------------------------------------------------
// info

export async function run(values, positionals) {
  if (positionals.length > 1) throw new UsageError('info takes one model (see: step-seg info --help)');
  const { loadModel, defaultModelPath } = await api();
  const source = modelSource(positionals[0], defaultModelPath);
  const bundled = path.resolve(source) === path.resolve(defaultModelPath);
  const model = await loadModel(source, { device: 'cpu' });
  const c = model.config;
  model.dispose();
  const { readHeaderFromFile } = (await import(pathToFileURL(path.join(root, 'dist', 'safetensors.js')).href)).default;
  const header = await readHeaderFromFile(weightsFile(source));
  const groups = new Map(), dtypes = new Map();
  let params = 0;
  for (const t of header.tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    params += n;
    const g = t.name.split('.')[0];
    groups.set(g, (groups.get(g) ?? 0) + n);
    dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + n);
  }
  const info = {
    model: path.resolve(source),
    arch: c.arch,
    patchSize: c.patchSize,
    embedDim: c.embedDim,
    depth: c.depth,
    numHeads: c.numHeads,
    mlpRatio: c.mlpRatio,
    imgSize: c.imgSize,
    inputSize: c.inputSize,
    classToken: c.classToken,
    regTokens: c.regTokens,
    params,
    paramsByGroup: Object.fromEntries(groups),
    dtypes: Object.fromEntries(dtypes),
    tensors: header.tensors.length,
    classes: c.classNames.map((name, i) => ({ index: i, name, color: c.palette[i] })),
    merge: c.merge,
    prune: c.prune,
    untrained: !!c.raw?.untrained,
    license: typeof c.raw?.license === 'string' ? c.raw.license : undefined,
    licenseFile: bundled ? kLicence.modelFile : undefined,
  };
  if (values.json) {
    process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    return 0;
  }
  const m = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : String(n));
  const lines = [];
  const row = (k, v) => lines.push(`${k.padEnd(10)} ${v}`);
  row('model', info.model + (info.untrained ? '  (untrained stand-in)' : ''));
  row('arch', `${c.arch}: patch ${c.patchSize}, embed ${c.embedDim}, depth ${c.depth}, heads ${c.numHeads}, mlp ratio ${c.mlpRatio}`);
  row('tokens', `class token ${c.classToken ? 'yes' : 'no'}, ${c.regTokens} register${c.regTokens === 1 ? '' : 's'}; trained grid ${c.imgSize[0]}x${c.imgSize[1]} px (${c.imgSize[0] / c.patchSize}x${c.imgSize[1] / c.patchSize} patches); input size ${c.inputSize}`);
  row('params', `${m(params)} in ${header.tensors.length} tensors (${[...dtypes].map(([d, n]) => `${d} ${m(n)}`).join(', ')})`);
  row('', [...groups].map(([g, n]) => `${g} ${m(n)}`).join(', '));
  row('classes', `${c.numClasses}${c.numClasses ? '' : ' (a backbone: no segmentation head)'}`);
  c.classNames.forEach((name, i) => lines.push(`  ${String(i).padStart(3)}  ${name.padEnd(16)} rgb(${c.palette[i].join(', ')})`));
  const scorer = (mg) => {
    if (mg.policy !== 'learned' || !c.policy) return `colorTau ${mg.colorTau}, textureTau ${mg.textureTau}`;
    const { pool, feature, outputs } = c.policy, stride = 2 ** (feature + 1);
    return `EfficientNet-Lite0 trunk to feature map ${feature} (stride ${stride}) of the input pooled by ${pool}: one score per ${pool * stride}-px cell, ${outputs === 1 ? 'sigmoid' : 'softmax'} heads`;
  };
  row('merge', c.merge ? `${c.merge.policy}: levels ${c.merge.levels.map((l) => `${l}x${l}`).join(', ')}, thresholds ${c.merge.thresholds.join(', ')}; ${scorer(c.merge)}` : 'off');
  row('prune', c.prune ? `exit heads after blocks ${c.prune.exitLayers.join(', ')} (of ${c.depth}); threshold ${c.prune.threshold}, keepTopK ${c.prune.keepTopK}` : 'none (no exit heads: every token reaches the final head)');
  row('licence', info.license ?? 'not stated in the config (ask whoever made the model)');
  if (info.licenseFile) row('', info.licenseFile);
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}
