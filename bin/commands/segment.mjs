// step-seg segment: segments images (files, folders, globs) and writes label maps and pictures.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

import { expandInputs, Progress } from './inputs.mjs';
import { UsageError, api, checkDevice, fmtMs, modelSource, pct, positiveInt, shown, tokenFigures, tokenWords } from './shared.mjs';

export const help = `Usage: step-seg segment <files, folders or globs...> [options]

Segments each image and writes, in the output folder, <name>.png (or .raw / .json), and with
--overlay <name>.overlay.png, with --tokens <name>.tokens.png. Each image's line gives the tokens as
shares of the dense count (patches + prefix tokens): how many enter the encoder after merging, and
with early exits how many each block runs on average. Folders are searched recursively for
images (jpg, png, webp, gif, tiff, avif); globs take * (within a folder), ** (any folders) and ?.
Quote globs so the shell leaves them alone. Images that cannot be read are reported and skipped; the
exit code is then 1.

Options:
  -o, --out DIR            output folder (default ./step-seg-out)
  -f, --format FORMAT      label map format (default png):
                             png   the labels in the model's palette
                             raw   the labels as bytes, row-major (uint8; uint16 LE above 256 classes)
                             json  { file, width, height, classes, dtype, labels (base64 of raw), stats }
      --overlay            also write the label colours blended on the photo
      --tokens             also write where the tokens went (superpatches, early exits, legend)
  -m, --model PATH         a model directory or .safetensors file, or default (the bundled model, the default)
  -d, --device DEVICE      auto | cpu | cuda (default auto)
  -s, --size N             long side for inference in pixels (default: the model's input size)
      --merge MODE         off | similarity | learned (default: the model's config); learned only for a
                           model whose weights carry a merge policy (the bundled model does)
      --prune VALUE        off | a confidence threshold such as 0.9 (default: the model's config)
  -q, --quiet              no per-image lines or progress bar, only the summary and errors
      --verbose            stack traces on errors
  -h, --help               this help`;

export const options = {
  out: { type: 'string', short: 'o' },
  format: { type: 'string', short: 'f' },
  overlay: { type: 'boolean' },
  tokens: { type: 'boolean' },
  model: { type: 'string', short: 'm' },
  device: { type: 'string', short: 'd' },
  size: { type: 'string', short: 's' },
  merge: { type: 'string' },
  prune: { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
};

// ---------------------------------------------------------------------------------------------------
// segment

export async function run(values, positionals) {
  if (!positionals.length) throw new UsageError('segment needs at least one image, folder or glob (see: step-seg segment --help)');
  const format = values.format ?? 'png';
  if (!['png', 'raw', 'json'].includes(format)) throw new UsageError(`--format takes png, raw or json, not ${JSON.stringify(format)}`);
  const size = positiveInt(values.size, '--size');
  let merge;
  if (values.merge !== undefined) {
    if (values.merge === 'off') merge = false;
    else if (values.merge === 'similarity' || values.merge === 'learned') merge = { policy: values.merge };
    else throw new UsageError(`--merge takes off, similarity or learned, not ${JSON.stringify(values.merge)}`);
  }
  let prune;
  if (values.prune !== undefined) {
    if (values.prune === 'off') prune = false;
    else {
      const t = Number(values.prune);
      if (values.prune.trim() === '' || !Number.isFinite(t)) throw new UsageError(`--prune takes off or a confidence threshold such as 0.9, not ${JSON.stringify(values.prune)}`);
      prune = { threshold: t };
    }
  }
  const out = path.resolve(values.out ?? 'step-seg-out');
  const { loadModel, colorize, overlay, tokenPicture, defaultModelPath } = await api();

  const { files, problems } = await expandInputs(positionals);
  let failed = 0;
  for (const p of problems) {
    process.stderr.write(`step-seg: ${p.input}: ${p.message}\n`);
    failed++;
  }
  if (!files.length) throw new Error('no images to segment');

  const model = await loadModel(modelSource(values.model, defaultModelPath), { device: checkDevice(values.device) });
  const cfg = model.config;
  if (merge?.policy === 'learned' && !cfg.policy) {
    model.dispose();
    throw new UsageError(
      `--merge learned: this model carries no learned merge policy (its weights have no policy.* tensors; the bundled model has one). ` +
        `Use --merge similarity (the training-free scorer, the default) or --merge off, or --model a model trained with a policy`,
    );
  }
  if (prune && !cfg.prune) throw new UsageError(`--prune ${values.prune}: this model has no exit heads, so --prune takes only off`);
  if (size !== undefined && (size < cfg.patchSize || size > 8192)) throw new UsageError(`--size takes ${cfg.patchSize} to 8192 for this model, not ${size}`);
  const options = {};
  if (size !== undefined) options.size = size;
  if (merge !== undefined) options.merge = merge;
  if (prune !== undefined) options.prune = prune;
  await fsp.mkdir(out, { recursive: true });

  const quiet = !!values.quiet;
  const bar = !quiet && process.stderr.isTTY && files.length > 1 ? new Progress(files.length) : undefined;
  const used = new Set();
  const outName = (file) => {
    const base = path.parse(file).name;
    let name = base;
    for (let k = 2; used.has(name.toLowerCase()); k++) name = `${base}-${k}`;
    used.add(name.toLowerCase());
    return name;
  };
  const report = (line) => (bar ? bar.say(line) : process.stderr.write(line + '\n'));
  let ok = 0, msSum = 0, inputShareSum = 0, perBlockShareSum = 0, gflopsSum = 0, gflopsDenseSum = 0, anyExits = false;
  try {
    for (const file of files) {
      bar?.draw(path.basename(file));
      let written;
      let result;
      try {
        const bytes = await fsp.readFile(file);
        result = await model.segment(bytes, options);
        const name = outName(file);
        written = [];
        const write = async (suffix, data) => {
          const target = path.join(out, name + suffix);
          await fsp.writeFile(target, data);
          written.push(shown(target));
        };
        const { labels, width, height } = result;
        const raw = Buffer.from(labels.buffer, labels.byteOffset, labels.byteLength);
        if (format === 'png') await write('.png', await colorize(result, cfg.palette));
        else if (format === 'raw') await write('.raw', raw);
        else
          await write(
            '.json',
            JSON.stringify({
              file,
              width,
              height,
              classes: result.classes,
              dtype: labels instanceof Uint16Array ? 'uint16' : 'uint8',
              labels: raw.toString('base64'),
              stats: result.stats,
            }),
          );
        if (values.overlay) await write('.overlay.png', await overlay(bytes, result, cfg.palette));
        if (values.tokens)
          await write('.tokens.png', await tokenPicture(bytes, result));
      } catch (err) {
        // an option the library refuses is the same for every image: stop at the first
        if (err?.code === 'ERR_STEP_BAD_INPUT' && /\boptions\./.test(err.message)) throw err;
        if (err?.code === 'ERR_STEP_DISPOSED' || err?.code === 'ERR_STEP_INTERNAL') throw err;
        failed++;
        report(`step-seg: ${file}: ${err?.message ?? err}` + (values.verbose && err?.stack ? `\n${err.stack}` : ''));
        if (bar) bar.done++;
        continue;
      }
      const s = result.stats, f = tokenFigures(s.tokens);
      ok++;
      msSum += s.ms.total;
      inputShareSum += f.inputShare;
      perBlockShareSum += f.perBlockShare;
      anyExits ||= Math.round(f.perBlock) !== f.input;
      gflopsSum += s.gflops;
      gflopsDenseSum += s.gflopsDense;
      if (bar) bar.done++;
      else if (!quiet)
        process.stdout.write(
          `${file}: ${result.width}x${result.height}, ${fmtMs(s.ms.total)} ms, ${tokenWords(f)}, ` +
            `${s.gflops.toFixed(2)} GFLOPs -> ${written.join(', ')}\n`,
        );
    }
  } finally {
    bar?.end();
    model.dispose();
  }
  if (ok)
    process.stdout.write(
      `${ok} image${ok === 1 ? '' : 's'} segmented${failed ? `, ${failed} failed` : ''} on ${model.device} into ${shown(out)}: ` +
        `mean ${fmtMs(msSum / ok)} ms per image; of the dense tokens, ${pct(inputShareSum / ok)} enter the encoder` +
        (anyExits ? `, ${pct(perBlockShareSum / ok)} per block on average with early exits` : '') +
        `; ${(gflopsSum / ok).toFixed(2)} of ${(gflopsDenseSum / ok).toFixed(2)} GFLOPs (dense)\n`,
    );
  else process.stdout.write(`0 images segmented, ${failed} failed\n`);
  return failed ? 1 : 0;
}
