#!/usr/bin/env node
// step-seg: the command line (`npx step-seg ...`). Plain Node ESM over the built package (dist/), no
// dependencies beyond the package's own. Commands: segment, doctor, info, bench; `--help` on each.
// Errors are one line on stderr (`step-seg: <message>`), the stack only with --verbose. Exit codes:
// 0 ok, 1 a failure (any image that failed), 2 a usage error.
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const kImageExtensions = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif', '.heic', '.heif']);

class UsageError extends Error {}

// ---------------------------------------------------------------------------------------------------
// help

const kHelp = {
  main: `step-seg ${pkg.version}: semantic segmentation of large images with Vision Transformers (STEP)

Usage: step-seg <command> [options]

Commands:
  segment <inputs...>   segment images (files, folders, globs) and write label maps and pictures
  info [model]          a model's config, classes, parameters, merging and exit layers
  doctor                which binary loaded, CUDA status, GPU, CPU features, Node and N-API
  bench                 time dense vs STEP on the demo image at 512 and 1024 px

Options:
  -h, --help            help (also: step-seg <command> --help)
      --version         the version
      --verbose         stack traces on errors

Examples:
  step-seg segment photos/ --out labels --overlay
  step-seg segment "shots/**/*.jpg" --size 1024 --format json
  step-seg info default

The code is Apache-2.0; the bundled model (default) is for research and non-commercial use only
(trained on CamVid): see its weights/LICENSE, or step-seg info.`,

  segment: `Usage: step-seg segment <files, folders or globs...> [options]

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
                           model whose weights carry a merge policy (the bundled model does not)
      --prune VALUE        off | a confidence threshold such as 0.9 (default: the model's config)
  -q, --quiet              no per-image lines or progress bar, only the summary and errors
      --verbose            stack traces on errors
  -h, --help               this help`,

  info: `Usage: step-seg info [model] [options]

Prints a model's config, classes, parameter count (from the safetensors header), merging settings,
exit layers and licence. model: a directory with config.json + model.safetensors, a .safetensors
file with its config in __metadata__, or default (the bundled model, the default; ./default for a
folder of that name).

Options:
      --json               the same as JSON
      --verbose            stack traces on errors
  -h, --help               this help`,

  doctor: `Usage: step-seg doctor [options]

Which native binary loaded, from where and which build made it (binding.gyp or cmake-js), whether
CUDA is usable and if not why and how to get it, the GPU, driver and runtime versions, the CPU
features and engine settings, Node and N-API versions, and the licences.

Options:
      --json               the same as JSON
      --verbose            stack traces on errors
  -h, --help               this help`,

  bench: `Usage: step-seg bench [options]

Times the model on this machine, dense (merge off, prune off) against STEP (the model's defaults),
on the bundled demo image, and prints the median time, tokens and GFLOPs per size.

Options:
  -m, --model PATH         model, or default (the bundled model, the default)
  -d, --device DEVICE      auto | cpu | cuda (default auto)
      --image FILE         image (default: the bundled assets/demo-rocket.jpg)
      --sizes LIST         comma-separated long sides (default 512,1024)
      --runs N             timed runs per case, after one warm-up (default 5)
      --verbose            stack traces on errors
  -h, --help               this help`,
};

const kCommon = {
  help: { type: 'boolean', short: 'h' },
  verbose: { type: 'boolean' },
};

const kOptions = {
  segment: {
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
  },
  info: { json: { type: 'boolean' } },
  doctor: { json: { type: 'boolean' } },
  bench: {
    model: { type: 'string', short: 'm' },
    device: { type: 'string', short: 'd' },
    image: { type: 'string' },
    sizes: { type: 'string' },
    runs: { type: 'string' },
  },
};

// ---------------------------------------------------------------------------------------------------
// the package API, loaded on first use so that --help and --version work without dist/ or the addon

let apiPromise;
function api() {
  apiPromise ??= (async () => {
    let index, pictures;
    try {
      index = await import(pathToFileURL(path.join(root, 'dist', 'index.mjs')).href);
      // lib/pictures.ts compiles to CommonJS; the index re-exports it once it lists it
      pictures = index.tokenPicture ? index : (await import(pathToFileURL(path.join(root, 'dist', 'pictures.js')).href)).default;
    } catch (err) {
      if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes(path.join(root, 'dist')))
        throw new Error(`${path.join(root, 'dist')} is missing or incomplete: run \`npm run build:ts\` in ${root}`, { cause: err });
      throw err;
    }
    return { ...index, overlay: pictures.overlay, tokenPicture: pictures.tokenPicture };
  })();
  return apiPromise;
}

// ---------------------------------------------------------------------------------------------------
// small helpers

function parse(command, argv) {
  try {
    return parseArgs({ args: argv, options: { ...kCommon, ...kOptions[command] }, allowPositionals: true, strict: true });
  } catch (err) {
    // node's messages are long and suggest `--`; keep the one fact that matters
    const m = /Unknown option '([^']+)'/.exec(err.message);
    if (m) throw new UsageError(`unknown option ${m[1]} for '${command}' (see: step-seg ${command} --help)`);
    const v = /Option '([^']+)' argument missing/.exec(err.message);
    if (v) throw new UsageError(`option ${v[1].split(',').pop().trim().split(' ')[0]} needs a value (see: step-seg ${command} --help)`);
    throw new UsageError(err.message.split('\n')[0]);
  }
}

function positiveInt(value, option) {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`${option} takes a positive integer, not ${JSON.stringify(value)}`);
  return n;
}

function checkDevice(value) {
  if (value === undefined) return undefined;
  if (!['auto', 'cpu', 'cuda'].includes(value)) throw new UsageError(`--device takes auto, cpu or cuda, not ${JSON.stringify(value)}`);
  return value;
}

const fmtMs = (ms) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const decodeVersion = (v) => (v ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none');
function fmtDuration(ms) {
  if (!Number.isFinite(ms)) return '--:--';
  const s = Math.round(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const mmss = `${String(m).padStart(h ? 2 : 1, '0')}:${String(s % 60).padStart(2, '0')}`;
  return h ? `${h}:${mmss}` : mmss;
}

// A path as the user would type it: relative below the working folder, else absolute.
function shown(p) {
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

// A --model / info argument: `default` (or nothing) is the bundled model, anything else a path.
function modelSource(value, defaultModelPath) {
  return value === undefined || value === 'default' ? defaultModelPath : value;
}

// The licences, for info and doctor: the code's, and where the bundled model's terms are (its
// config.json says them in one line, as `license`).
const kLicence = { code: 'Apache-2.0 (LICENSE)', modelFile: path.join(root, 'weights', 'LICENSE') };

// A program on the PATH, or undefined.
function onPath(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const file = path.join(dir || '.', name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

// The token counts of one result in words, as shares of the dense count (patches + prefix tokens):
// the tokens that enter the encoder after merging, and with early exits the mean over blocks of the
// tokens each block runs on (the encoder's cost follows that one).
function tokenFigures(t) {
  const perBlock = t.perBlock.length ? t.perBlock.reduce((a, b) => a + b, 0) / t.perBlock.length : t.input;
  return { dense: t.dense, input: t.input, perBlock, inputShare: t.input / t.dense, perBlockShare: perBlock / t.dense };
}
const pct = (x) => `${(100 * x).toFixed(0)}%`;
function tokenWords(f) {
  let s = `tokens: ${f.input} of ${f.dense} enter the encoder (${pct(f.inputShare)})`;
  if (Math.round(f.perBlock) !== f.input) s += `, ${Math.round(f.perBlock)} per block on average with early exits (${pct(f.perBlockShare)})`;
  return s;
}

// Where a model's weights are: a directory's model.safetensors, or the file itself.
function weightsFile(source) {
  return fs.statSync(source).isDirectory() ? path.join(source, 'model.safetensors') : source;
}

// ---------------------------------------------------------------------------------------------------
// inputs: files, folders (recursive) and globs (*, **, ?), dependency-free

function hasGlob(s) {
  return /[*?]/.test(s);
}

function segmentRegExp(segment) {
  let re = '';
  for (const ch of segment) re += ch === '*' ? '[^/]*' : ch === '?' ? '[^/]' : ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${re}$`);
}

// Files under dir, recursively (symbolic links to folders are not followed), as paths joined to dir.
async function walk(dir, onFile) {
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await walk(p, onFile);
    else if (e.isFile() || e.isSymbolicLink()) onFile(p);
  }
}

// Matches a glob: the segments before the first wildcard are the folder to search.
async function glob(pattern) {
  const parts = pattern.split(/[\\/]+/);
  const absolute = path.isAbsolute(pattern);
  let base = absolute ? path.parse(pattern).root : '.';
  let i = 0;
  if (absolute && parts[0] === '') i = 1;
  for (; i < parts.length && !hasGlob(parts[i]); i++) base = path.join(base, parts[i]);
  const rest = parts.slice(i).filter((s) => s !== '' && s !== '.');
  const matchers = rest.map((s) => (s === '**' ? '**' : segmentRegExp(s)));
  const match = (segs, m) => {
    if (m.length === 0) return segs.length === 0;
    if (m[0] === '**') {
      for (let k = 0; k <= segs.length; k++) if (match(segs.slice(k), m.slice(1))) return true;
      return false;
    }
    if (segs.length === 0) return false;
    // * and ? do not match a leading dot, as in shells
    if (segs[0].startsWith('.') && !m[0].source.startsWith('^\\.')) return false;
    return m[0].test(segs[0]) && match(segs.slice(1), m.slice(1));
  };
  const out = [];
  await walk(base, (file) => {
    const rel = path.relative(base, file).split(path.sep);
    if (match(rel, matchers)) out.push(base === '.' ? path.normalize(file) : file);
  });
  return out;
}

// Expands the positional inputs; returns the files and the inputs that matched nothing.
async function expandInputs(inputs) {
  const files = [], problems = [], seen = new Set();
  const add = (f) => {
    const key = path.resolve(f);
    if (!seen.has(key)) seen.add(key), files.push(f);
  };
  const isImage = (f) => kImageExtensions.has(path.extname(f).toLowerCase());
  for (const input of inputs) {
    let stat;
    try {
      stat = await fsp.stat(input);
    } catch {
      stat = undefined;
    }
    if (stat?.isDirectory()) {
      const found = [];
      await walk(input, (f) => isImage(f) && found.push(f));
      if (!found.length) problems.push({ input, message: 'no images in this folder' });
      found.forEach(add);
    } else if (stat) {
      add(input);
    } else if (hasGlob(input)) {
      const found = (await glob(input)).filter(isImage);
      if (!found.length) problems.push({ input, message: 'no images match this pattern' });
      found.forEach(add);
    } else {
      problems.push({ input, message: 'no such file or folder' });
    }
  }
  return { files, problems };
}

// ---------------------------------------------------------------------------------------------------
// progress on stderr: a bar with an ETA on a terminal, else nothing (the caller prints lines)

class Progress {
  constructor(total) {
    this.total = total;
    this.done = 0;
    this.start = performance.now();
    this.active = false;
  }
  draw(label = '') {
    const cols = process.stderr.columns || 80, width = 24;
    const frac = this.total ? this.done / this.total : 1, filled = Math.round(frac * width);
    const elapsed = performance.now() - this.start;
    const eta = this.done ? (elapsed / this.done) * (this.total - this.done) : NaN;
    let line = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${this.done}/${this.total} ${(100 * frac).toFixed(0).padStart(3)}%  ETA ${fmtDuration(eta)}  ${label}`;
    if (line.length > cols - 1) line = line.slice(0, cols - 2) + '…';
    process.stderr.write(`\r\x1b[2K${line}`);
    this.active = true;
  }
  // prints a line above the bar
  say(text) {
    if (this.active) process.stderr.write('\r\x1b[2K');
    process.stderr.write(text + '\n');
    if (this.active) this.draw();
  }
  end() {
    if (this.active) process.stderr.write('\r\x1b[2K');
    this.active = false;
  }
}

// ---------------------------------------------------------------------------------------------------
// segment

async function cmdSegment(values, positionals) {
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
      `--merge learned: this model carries no learned merge policy (its weights have no policy.* tensors; the bundled model ships without one). ` +
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

// ---------------------------------------------------------------------------------------------------
// doctor

// How to get a binary with the CUDA backend, for one without it.
function cudaHint(binary) {
  if (binary.kind === 'STEP_SEG_BINARY') return 'unset STEP_SEG_BINARY to load the package\'s own binary, or point it at a cmake-js build made with nvcc';
  const nvcc = onPath('nvcc');
  if (!fs.existsSync(path.join(root, 'CMakeLists.txt')))
    // an installed package: it ships the CPU-only sources alone
    return (
      (binary.kind === 'prebuilt' ? 'this prebuilt binary was built without the CUDA backend' : `npm compiled this fallback because no prebuilt binary fits ${process.platform}-${process.arch}`) +
      '; for CUDA, run `npm run build:native` in a clone of step-seg (with nvcc) and load it with STEP_SEG_BINARY=<clone>/build/Release/step_seg.node'
    );
  const run = `\`npm run build:native\` in ${root} (cmake-js) builds the CUDA backend in`;
  return nvcc ? `nvcc is on the PATH (${nvcc}): ${run}, and the next load picks it up` : `${run} once nvcc (the CUDA toolkit) is on the PATH`;
}

// The bundled model's licence in one line, from its config.
function defaultModelLicence() {
  try {
    const license = JSON.parse(fs.readFileSync(path.join(root, 'weights', 'default', 'config.json'), 'utf8')).license;
    return typeof license === 'string' ? license : undefined;
  } catch {
    return undefined;
  }
}

function cpuFlags() {
  if (process.platform !== 'linux') return undefined;
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const line = text.split('\n').find((l) => /^flags\s*:/.test(l)) ?? '';
    const flags = new Set(line.replace(/^flags\s*:/, '').trim().split(/\s+/));
    const model = (/^model name\s*:\s*(.*)$/m.exec(text) ?? [])[1];
    return { model, avx2: flags.has('avx2'), fma: flags.has('fma'), avx512f: flags.has('avx512f') };
  } catch {
    return undefined;
  }
}

async function cmdDoctor(values) {
  const report = {
    version: pkg.version,
    node: process.version,
    napi: Number(process.versions.napi),
    napiNeeded: pkg.binary?.napi_versions?.[0],
    platform: `${process.platform}-${process.arch}`,
    glibc: process.report?.getReport?.().header?.glibcVersionRuntime,
    cpus: os.cpus().length,
  };
  let status = 0;
  let index;
  try {
    index = await api();
  } catch (err) {
    report.packageError = err.message;
  }
  if (index) {
    try {
      const info = index.runtimeInfo();
      const rel = path.relative(root, info.binary);
      report.binary = {
        file: info.binary,
        kind: process.env.STEP_SEG_BINARY ? 'STEP_SEG_BINARY' : rel.startsWith('prebuilds') ? 'prebuilt' : rel.startsWith('build') ? 'local build' : 'other',
        build: info.build ?? 'unknown',
      };
      report.engine = { threads: info.threads, gemmKernel: info.gemmKernel };
    } catch (err) {
      report.binaryError = err.message;
      status = 1;
    }
    if (report.binary) {
      const p = await index.cudaStatus();
      report.cuda = p;
      if (!p.compiled) report.cudaHint = cudaHint(report.binary);
      try {
        const m = await index.loadModel();
        report.defaultDevice = { device: m.device, reason: m.deviceReason };
        m.dispose();
      } catch (err) {
        report.defaultDevice = { error: err.message };
      }
    }
  } else status = 1;
  report.cpu = cpuFlags();
  try {
    const sharp = (await import('sharp')).default;
    report.sharp = { sharp: sharp.versions.sharp, libvips: sharp.versions.vips };
  } catch {
    // reported through packageError when it matters
  }
  report.env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('STEP_SEG_')));
  report.licence = { code: kLicence.code, bundledModel: defaultModelLicence(), terms: kLicence.modelFile };

  if (values.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    return status;
  }
  const lines = [`step-seg ${report.version} doctor`];
  const row = (k, v) => lines.push(`  ${k.padEnd(10)} ${v}`);
  if (report.packageError) row('package', `cannot load: ${report.packageError}`);
  if (report.binary) {
    const b = report.binary;
    const cuda = report.cuda?.emulated ? 'cuda (emulated): the CUDA emulator build, for tests only' : report.cuda?.compiled ? 'the CUDA backend compiled in' : 'CPU only';
    row('binary', `${b.file} (${b.kind})`);
    row('build', b.build === 'binding.gyp' ? `binding.gyp, ${cuda}: the fallback that npm install compiles` : `${b.build}, ${cuda}`);
  }
  if (report.binaryError) {
    const [first, ...more] = report.binaryError.split('\n');
    row('binary', `NOT LOADED: ${first.replace(/^step-seg: /, '')}`);
    for (const l of more) lines.push(`             ${l.trim()}`);
  }
  if (report.cuda) {
    const c = report.cuda;
    const kind = c.emulated ? 'cuda (emulated)' : 'cuda';
    row('cuda', !c.compiled ? `not compiled into this binary: ${c.reason.replace(/^this build of step-seg has no CUDA backend: /, '')}` : c.usable ? `${kind}: usable` : `${kind}: not usable: ${c.reason}`);
    if (c.usable && c.selfCheck) row('self-check', c.selfCheck.passed ? "passed (device 'auto' takes the GPU)" : `${c.selfCheck.reason} (device 'auto' takes the CPU)`);
    if (report.cudaHint) row('', report.cudaHint);
    if (c.compiled) {
      row('gpu', c.name ? `${c.name}, compute capability ${Math.floor(c.computeCapability / 10)}.${c.computeCapability % 10}, ${c.deviceCount} device${c.deviceCount === 1 ? '' : 's'}` : 'none found');
      row('driver', `CUDA ${decodeVersion(c.driverVersion)} (${c.driverVersion}); runtime ${decodeVersion(c.runtimeVersion)} (${c.runtimeVersion}), linked statically`);
    }
  }
  if (report.defaultDevice)
    row('device', report.defaultDevice.error ? `default model did not load: ${report.defaultDevice.error}` : `auto -> ${report.defaultDevice.device}${report.defaultDevice.reason ? ` (${report.defaultDevice.reason})` : ''}`);
  const flags = report.cpu ? `; avx2 ${report.cpu.avx2 ? 'yes' : 'no'}, fma ${report.cpu.fma ? 'yes' : 'no'}, avx512f ${report.cpu.avx512f ? 'yes' : 'no'} (/proc/cpuinfo)` : '';
  if (report.engine) row('cpu', `gemm kernel ${report.engine.gemmKernel}, ${report.engine.threads} threads of ${report.cpus} cores${flags}`);
  else row('cpu', `${report.cpus} cores${flags}`);
  if (report.cpu?.model) row('', report.cpu.model);
  row('node', `${report.node}, N-API ${report.napi} (the binary needs ${report.napiNeeded}), ${report.platform}${report.glibc ? `, glibc ${report.glibc}` : ''}`);
  if (report.sharp) row('sharp', `${report.sharp.sharp}, libvips ${report.sharp.libvips}`);
  const env = Object.entries(report.env);
  row('env', env.length ? env.map(([k, v]) => `${k}=${v}`).join(' ') : 'no STEP_SEG_* variables set');
  row('licence', `code ${report.licence.code}; bundled model: ${report.licence.bundledModel ?? 'see its weights/LICENSE'}`);
  row('', report.licence.terms);
  process.stdout.write(lines.join('\n') + '\n');
  return status;
}

// ---------------------------------------------------------------------------------------------------
// info

async function cmdInfo(values, positionals) {
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
  row('merge', c.merge ? `${c.merge.policy}: levels ${c.merge.levels.map((l) => `${l}x${l}`).join(', ')}, thresholds ${c.merge.thresholds.join(', ')}, colorTau ${c.merge.colorTau}, textureTau ${c.merge.textureTau}` : 'off');
  row('prune', c.prune ? `exit heads after blocks ${c.prune.exitLayers.join(', ')} (of ${c.depth}); threshold ${c.prune.threshold}, keepTopK ${c.prune.keepTopK}` : 'none (no exit heads: every token reaches the final head)');
  row('licence', info.license ?? 'not stated in the config (ask whoever made the model)');
  if (info.licenseFile) row('', info.licenseFile);
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// bench

async function cmdBench(values) {
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

// ---------------------------------------------------------------------------------------------------
// main

const kCommands = { segment: cmdSegment, info: cmdInfo, doctor: cmdDoctor, bench: cmdBench };

async function main(argv) {
  const verbose = argv.includes('--verbose');
  // the library's one-off CPU-fallback notice, as one line in the CLI's voice
  process.removeAllListeners('warning');
  process.on('warning', (w) => process.stderr.write(`step-seg: warning: ${w.message}\n`));
  try {
    const command = argv.find((a) => !a.startsWith('-'));
    const before = command === undefined ? argv : argv.slice(0, argv.indexOf(command));
    if (before.includes('--version')) {
      process.stdout.write(pkg.version + '\n');
      return 0;
    }
    if (command === undefined) {
      if (before.includes('--help') || before.includes('-h')) {
        process.stdout.write(kHelp.main + '\n');
        return 0;
      }
      const unknown = before.find((a) => a !== '--verbose');
      if (unknown) throw new UsageError(`unknown option ${unknown} (see: step-seg --help)`);
      process.stderr.write(kHelp.main + '\n');
      return 2;
    }
    if (command === 'help') {
      const topic = argv[argv.indexOf(command) + 1];
      process.stdout.write((kHelp[topic] ?? kHelp.main) + '\n');
      return 0;
    }
    const run = kCommands[command];
    if (!run) throw new UsageError(`unknown command ${JSON.stringify(command)}: expected segment, info, doctor or bench (see: step-seg --help)`);
    const { values, positionals } = parse(command, argv.filter((a, i) => i !== argv.indexOf(command)));
    if (values.help) {
      process.stdout.write(kHelp[command] + '\n');
      return 0;
    }
    return await run(values, positionals);
  } catch (err) {
    // one line; a message with more (the binary loader's list of fixes) says where the rest is
    const message = String(err?.message ?? err).replace(/^step-seg: /, '');
    const [first, ...more] = message.split('\n');
    process.stderr.write(`step-seg: ${first}${more.length && !verbose ? ' (details: --verbose or step-seg doctor)' : ''}\n`);
    if (verbose) process.stderr.write(`${more.length ? more.join('\n') + '\n' : ''}${err?.stack ?? ''}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
