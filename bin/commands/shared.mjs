// Shared by the CLI's commands (bin/step-seg.mjs dispatches to bin/commands/<command>.mjs): the
// package root and version, the usage error, the package API loaded on first use, and small helpers.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
export const kImageExtensions = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif', '.heic', '.heif']);

export class UsageError extends Error {}

// ---------------------------------------------------------------------------------------------------
// the package API, loaded on first use so that --help and --version work without dist/ or the addon

let apiPromise;
export function api() {
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

export function positiveInt(value, option) {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`${option} takes a positive integer, not ${JSON.stringify(value)}`);
  return n;
}

export function checkDevice(value) {
  if (value === undefined) return undefined;
  if (!['auto', 'cpu', 'cuda'].includes(value)) throw new UsageError(`--device takes auto, cpu or cuda, not ${JSON.stringify(value)}`);
  return value;
}

export const fmtMs = (ms) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));
export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
export const decodeVersion = (v) => (v ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none');
export function fmtDuration(ms) {
  if (!Number.isFinite(ms)) return '--:--';
  const s = Math.round(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const mmss = `${String(m).padStart(h ? 2 : 1, '0')}:${String(s % 60).padStart(2, '0')}`;
  return h ? `${h}:${mmss}` : mmss;
}

// A path as the user would type it: relative below the working folder, else absolute.
export function shown(p) {
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

// A --model / info argument: `default` (or nothing) is the bundled model, anything else a path.
export function modelSource(value, defaultModelPath) {
  return value === undefined || value === 'default' ? defaultModelPath : value;
}

// The licences, for info and doctor: the code's, and where the bundled model's terms are (its
// config.json says them in one line, as `license`).
export const kLicence = { code: 'Apache-2.0 (LICENSE)', modelFile: path.join(root, 'weights', 'LICENSE') };

// A program on the PATH, or undefined.
export function onPath(name) {
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
export function tokenFigures(t) {
  const perBlock = t.perBlock.length ? t.perBlock.reduce((a, b) => a + b, 0) / t.perBlock.length : t.input;
  return { dense: t.dense, input: t.input, perBlock, inputShare: t.input / t.dense, perBlockShare: perBlock / t.dense };
}
export const pct = (x) => `${(100 * x).toFixed(0)}%`;
export function tokenWords(f) {
  let s = `tokens: ${f.input} of ${f.dense} enter the encoder (${pct(f.inputShare)})`;
  if (Math.round(f.perBlock) !== f.input) s += `, ${Math.round(f.perBlock)} per block on average with early exits (${pct(f.perBlockShare)})`;
  return s;
}

// Where a model's weights are: a directory's model.safetensors, or the file itself.
export function weightsFile(source) {
  return fs.statSync(source).isDirectory() ? path.join(source, 'model.safetensors') : source;
}
