/**
 * Fuzzing step-seg as a hostile user would: mutated models (header, config, offsets, bytes, weight
 * values, file forms), mutated images (encoded bytes, raw shapes, paths, hostile objects) and mutated
 * options, from a fixed seed. Every case runs in its own child process (scripts/fuzz-case.cjs, against
 * dist/: run `npm run build:ts` first) with a timeout; the script prints
 *   cases / ok / coded errors / uncoded errors / crashes / hangs
 * and keeps the cases that were not ok or coded under --keep (default os.tmpdir()/step-seg-fuzz-kept).
 *
 *   node --import tsx scripts/fuzz.ts [--cases 5000] [--seed 1] [--jobs 2] [--timeout 30] [--log fuzz.jsonl]
 *
 * Children run with STEP_SEG_MEMORY_LIMIT_MB=2048 and one CPU thread each. Valid sizes stay small (up to
 * 1024 px, tiles at most 2048 px in all; the boundary values drawn are the invalid ones just past each
 * limit, and 65536, which the memory budget refuses): the fuzzer looks for crashes, hangs and uncoded
 * errors, not for long legitimate work (a dense forward at 8192 px takes minutes on a CPU, which the
 * timeout would count as a hang). A hang is a case with no result within --timeout seconds.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import sharp from 'sharp';

import { encodeSafetensors } from '../lib/safetensors';
import { randomVit, rng } from './cases/random';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const CASES = Number(arg('cases', '5000')), SEED = Number(arg('seed', '1')), JOBS = Number(arg('jobs', '2'));
const TIMEOUT = Number(arg('timeout', '30')) * 1000;
const LOG = arg('log', '');
const KEEP = arg('keep', path.join(os.tmpdir(), 'step-seg-fuzz-kept'));
const root = path.resolve(__dirname, '..');
const runner = path.join(__dirname, 'fuzz-case.cjs');

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
const int = (r: Rand, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
const num = (s: string) => ({ $num: s }); // NaN and infinities through JSON

// Values that break assumptions: limits and one past them, wrong types, deep nesting.
function nasty(r: Rand): unknown {
  const deep = (n: number): unknown => (n ? [deep(n - 1)] : 1);
  return pick(r, [
    0, -1, 1, 2, 3, 15, 16, 17, 255, 256, 257, 8193, 65536, 65537, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 32 + 16, 2 ** 53, 1e6, 1e300, -1e300,
    0.5, 1.5, -0.0, 1e-45, 3e38, num('NaN'), num('Infinity'), num('-Infinity'), '', 'x', '512', null, true, false, [], {}, [1, 2, 3], [[1]],
    { a: 1 }, deep(80), { $special: pick(r, ['proxy', 'getter', 'symbol', 'bigint', 'function', 'date', 'sparse']) },
  ]);
}

// ---- models -------------------------------------------------------------------------------------
interface Base {
  tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>;
  config: Record<string, unknown>;
}
function baseModel(seed: number): Base {
  const vit = randomVit({ embedDim: 32, depth: 2, numHeads: 2, imgSize: [32, 32], classNames: ['a', 'b', 'c'], exitLayers: [1], seed });
  const tensors: Base['tensors'] = {};
  for (const [name, data] of Object.entries(vit.tensors)) tensors[name] = { dtype: 'F32', shape: vit.shapes[name], data: Float32Array.from(data) };
  return { tensors, config: { ...vit.config } };
}
const configKeys = [
  'arch', 'img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'qkv_bias', 'class_token', 'reg_tokens', 'no_embed_class',
  'pre_norm', 'init_values', 'norm_eps', 'act', 'pixel_mean', 'pixel_std', 'class_names', 'num_classes', 'palette', 'input_size', 'decoder',
  'merge', 'prune', 'num_prefix_tokens', 'unknown_field',
];

function mutateModel(r: Rand, dir: string): unknown {
  const base = baseModel(int(r, 1, 4));
  const ops = pick(r, [0, 1, 1, 1, 2, 3]); // 0: the model is sound (its calls are what is fuzzed)
  let header: ((h: Record<string, any>) => void)[] = [];
  let bytes: ((b: Buffer) => Buffer)[] = [];
  for (let o = 0; o < ops; o++) {
    const names = Object.keys(base.tensors);
    const which = pick(r, ['config', 'config', 'delete-config', 'merge', 'prune', 'values', 'dtype', 'shape', 'offsets', 'duplicate', 'remove', 'bytes', 'truncate', 'append', 'length', 'deep', 'none']);
    switch (which) {
      case 'config':
        base.config[pick(r, configKeys)] = nasty(r);
        break;
      case 'delete-config':
        delete base.config[pick(r, configKeys)];
        break;
      case 'merge':
        base.config.merge = pick(r, [false, { policy: nasty(r) }, { levels: nasty(r), thresholds: nasty(r) }, { color_tau: nasty(r) }, { policy: 'learned', levels: [8], thresholds: [0.5] }]);
        break;
      case 'prune':
        base.config.prune = pick(r, [false, { exit_layers: nasty(r) }, { exit_layers: [1], threshold: nasty(r) }, { exit_layers: [1], keep_top_k: nasty(r) }]);
        break;
      case 'values': {
        const t = base.tensors[pick(r, names)];
        const v = pick(r, [3e38, -3e38, NaN, Infinity, 1e20, 0, 1e-40]);
        const n = pick(r, [1, t.data.length]);
        for (let i = 0; i < n; i++) t.data[int(r, 0, t.data.length - 1)] = v;
        break;
      }
      case 'dtype': {
        const name = pick(r, names), d = pick(r, ['F16', 'BF16', 'I64', 'U8', 'F64', 'X', '', 'f32']);
        header.push((h) => h[name] && (h[name].dtype = d));
        break;
      }
      case 'shape': {
        const name = pick(r, names), v = nasty(r);
        header.push((h) => {
          if (!h[name]) return;
          if (r() < 0.5) h[name].shape = v;
          else if (Array.isArray(h[name].shape) && h[name].shape.length) h[name].shape[int(r, 0, h[name].shape.length - 1)] = v;
        });
        break;
      }
      case 'offsets': {
        const name = pick(r, names), other = pick(r, names), k = int(r, 0, 3);
        header.push((h) => {
          if (!h[name]) return;
          const o = h[name].data_offsets;
          if (k === 0) h[name].data_offsets = h[other] ? [...h[other].data_offsets] : o; // alias
          else if (k === 1) h[name].data_offsets = [o[0] + pick(r, [-8, -4, 4, 8]), o[1] + pick(r, [-8, -4, 0, 4, 8])];
          else if (k === 2) h[name].data_offsets = [o[1], o[0]];
          else h[name].data_offsets = nasty(r);
        });
        break;
      }
      case 'duplicate': {
        const name = pick(r, names);
        bytes.push((b) => {
          if (b.length < 8) return b;
          const n = Number(b.readBigUInt64LE(0));
          const json = b.subarray(8, 8 + n).toString();
          const entry = json.match(new RegExp(`"${name.replace(/\./g, '\\.')}":\\{[^}]*\\}`));
          if (!entry) return b;
          const dup = json.replace(/^\{/, `{${entry[0]},`);
          const len = Buffer.alloc(8);
          len.writeBigUInt64LE(BigInt(Buffer.byteLength(dup)));
          return Buffer.concat([len, Buffer.from(dup), b.subarray(8 + n)]);
        });
        break;
      }
      case 'remove': {
        const name = pick(r, names);
        header.push((h) => delete h[name]);
        break;
      }
      case 'bytes':
        bytes.push((b) => {
          const c = Buffer.from(b);
          for (let i = int(r, 1, 8); i > 0; i--) c[int(r, 0, c.length - 1)] = int(r, 0, 255);
          return c;
        });
        break;
      case 'truncate':
        bytes.push((b) => b.subarray(0, int(r, 0, b.length - 1)));
        break;
      case 'append':
        bytes.push((b) => Buffer.concat([b, Buffer.alloc(int(r, 1, 64), int(r, 0, 255))]));
        break;
      case 'length':
        bytes.push((b) => {
          if (b.length < 8) return b;
          const c = Buffer.from(b);
          const near = BigInt(Math.max(0, Number(c.readBigUInt64LE(0)) + int(r, -9, 9)));
          c.writeBigUInt64LE(pick(r, [0n, 1n, 7n, BigInt(c.length), 2n ** 40n, 2n ** 63n, near]), 0);
          return c;
        });
        break;
      case 'deep': {
        let v: unknown = 1;
        for (let d = int(r, 60, 1000); d > 0; d--) v = [v];
        base.config[pick(r, configKeys)] = v;
        break;
      }
    }
  }
  // deep: an array nested past any bound, as text (JSON.stringify would recurse)
  let configText = JSON.stringify(base.config);
  if (r() < 0.03) configText = configText.replace(/^\{/, `{"deep":${'['.repeat(100000)}${']'.repeat(100000)},`);
  let buf = encodeSafetensors(base.tensors, { config: configText });
  if (header.length) {
    const n = Number(buf.readBigUInt64LE(0));
    const h = JSON.parse(buf.subarray(8, 8 + n).toString());
    for (const f of header) f(h);
    const text = JSON.stringify(h);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
    buf = Buffer.concat([len, Buffer.from(text), buf.subarray(8 + n)]);
  }
  for (const f of bytes) buf = f(buf);
  const form = pick(r, ['buffer', 'buffer', 'file', 'dir']);
  fs.writeFileSync(path.join(dir, 'model.safetensors'), buf);
  if (form === 'buffer') return { $blob: 'model.safetensors' };
  if (form === 'file') return { $path: 'model.safetensors' };
  fs.writeFileSync(path.join(dir, 'config.json'), r() < 0.1 ? configText.slice(0, int(r, 0, configText.length)) : configText);
  return { $path: '.' };
}

// ---- images -------------------------------------------------------------------------------------
let encoded: Record<string, Buffer> = {};
async function prepareImages(): Promise<void> {
  const r = rng(SEED * 7919 + 1);
  const w = 96, h = 64, raw = Buffer.alloc(w * h * 4);
  for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(r() * 256);
  const img = () => sharp(raw, { raw: { width: w, height: h, channels: 4 } });
  encoded = {
    png: await img().png().toBuffer(),
    jpeg: await img().jpeg().toBuffer(),
    webp: await img().webp().toBuffer(),
    gif: await img().gif().toBuffer(),
    tiff: await img().tiff().toBuffer(),
    pngrgb: await img().removeAlpha().png().toBuffer(),
    jpegexif: await img().removeAlpha().jpeg().withMetadata({ orientation: 6 }).toBuffer(),
  };
}

function mutateImage(r: Rand, dir: string, i: number): unknown {
  const kind = pick(r, ['encoded', 'encoded', 'encoded', 'mutated', 'mutated', 'raw', 'raw', 'raw', 'path', 'hostile']);
  const file = `image${i}`;
  if (kind === 'encoded' || kind === 'mutated') {
    let b = Buffer.from(encoded[pick(r, Object.keys(encoded))]);
    if (kind === 'mutated') {
      const m = pick(r, ['flip', 'truncate', 'prefix', 'zero']);
      if (m === 'flip') for (let k = int(r, 1, 16); k > 0; k--) b[int(r, 0, b.length - 1)] = int(r, 0, 255);
      else if (m === 'truncate') b = b.subarray(0, int(r, 0, b.length - 1));
      else if (m === 'prefix') b = Buffer.concat([encoded[pick(r, Object.keys(encoded))].subarray(0, 16), b.subarray(16)]);
      else b.fill(0, int(r, 0, b.length - 1));
    }
    fs.writeFileSync(path.join(dir, file), b);
    return r() < 0.3 ? { $path: file } : { $blob: file };
  }
  if (kind === 'raw') {
    const good = r() < 0.7;
    const width = good ? int(r, 1, 200) : nasty(r), height = good ? int(r, 1, 150) : nasty(r);
    const channels = good ? pick(r, [3, 4]) : pick(r, [0, 1, 2, 3, 4, 5, 3.5, '3', null]);
    const n = typeof width === 'number' && typeof height === 'number' && typeof channels === 'number' && width * height * channels < 1e6 && width * height * channels > 0
      ? Math.floor(width * height * channels) + (r() < 0.8 ? 0 : int(r, -3, 3))
      : int(r, 0, 1000);
    const bytes = Buffer.alloc(Math.max(0, n));
    for (let k = 0; k < bytes.length; k += 3) bytes[k] = int(r, 0, 255);
    fs.writeFileSync(path.join(dir, file), bytes);
    return { $raw: { data: r() < 0.9 ? { $blob: file } : { $special: pick(r, ['float64', 'uint16', 'detached', 'proxy']) }, width, height, channels } };
  }
  if (kind === 'path') return pick(r, [{ $path: 'nope.png' }, { $path: '.' }, { $path: '/dev/null' }, { $path: 'model.safetensors' }, '', '\0']);
  return pick(r, [nasty(r), { $special: 'proxy' }, { $special: 'getter' }, { data: nasty(r), width: 2, height: 2, channels: 3 }]);
}

// ---- options ------------------------------------------------------------------------------------
function mutateOptions(r: Rand): unknown {
  if (r() < 0.05) return nasty(r);
  const o: Record<string, unknown> = {};
  const valid = r() < 0.75;
  if (r() < 0.6) o.size = valid ? pick(r, [16, 32, 64, 100, 128, 256, 333, 512, 1024]) : nasty(r);
  if (r() < 0.2) o.probabilities = valid ? r() < 0.5 : nasty(r);
  if (r() < 0.2) o.logits = valid ? r() < 0.5 : nasty(r);
  if (r() < 0.3)
    o.merge = valid
      ? pick(r, [false, { levels: [4, 2], thresholds: [0.5, 0.4] }, { colorTau: 4 }, { policy: 'similarity', levels: [8], thresholds: [0.1] }])
      : pick(r, [nasty(r), { policy: nasty(r) }, { levels: nasty(r) }, { thresholds: nasty(r) }, { colorTau: nasty(r), textureTau: nasty(r) }, { policy: 'learned' }]);
  if (r() < 0.3)
    o.prune = valid
      ? pick(r, [false, { threshold: 0 }, { threshold: 0.5, keepTopK: 0 }, { threshold: 0, keepTopK: 2 ** 31 - 1 }, { exitLayers: [] }])
      : pick(r, [nasty(r), { threshold: nasty(r) }, { keepTopK: nasty(r) }, { exitLayers: nasty(r) }]);
  if (r() < 0.25) {
    if (valid) {
      o.tile = { size: pick(r, [64, 128, 256, 512]), ...(r() < 0.5 ? { overlap: pick(r, [0, 16, 32, 63, 64]) } : {}) };
      o.size = pick(r, [undefined, 128, 512, 1000, 2048]);
    } else o.tile = pick(r, [nasty(r), { size: nasty(r) }, { size: 64, overlap: nasty(r) }, { size: 64, x: 1 }]);
  }
  if (r() < 0.15) o.outputSize = valid ? pick(r, [1, 7, 100, 640, 2048]) : nasty(r);
  if (r() < 0.05) o[pick(r, ['tiles', 'device', '__proto__', 'constructor'])] = nasty(r);
  return o;
}

function makeCase(index: number, dir: string): unknown {
  const r = rng((SEED * 1_000_003 + index * 7_919) >>> 0);
  const family = pick(r, ['model', 'model', 'image', 'image', 'options', 'options', 'features', 'mixed']);
  const standIn = path.join(root, 'test', 'fixtures', 'stand-in');
  const model = family === 'model' || family === 'mixed' ? mutateModel(r, dir) : r() < 0.5 ? { $path: standIn } : (mutateModelClean(dir), { $blob: 'model.safetensors' });
  const load = r() < 0.05 ? nasty(r) : { device: r() < 0.97 ? 'cpu' : pick(r, ['auto', 'cuda', 'gpu', nasty(r)]) };
  const calls: unknown[] = [];
  const n = int(r, 1, 2);
  for (let c = 0; c < n; c++) {
    const op = family === 'features' ? 'forwardFeatures' : pick(r, ['segment', 'segment', 'segment', 'segmentBatch', 'concurrent']);
    if (op === 'forwardFeatures') {
      const good = r() < 0.6;
      const dims = good ? [int(r, 1, 2), 3, 16 * int(r, 1, 4), 16 * int(r, 1, 4)] : pick(r, [nasty(r), [1, 3, 16, nasty(r)], [nasty(r), 3, 16, 16], [1, 4, 16, 16]]);
      const len = Array.isArray(dims) && dims.every((d) => typeof d === 'number') ? Math.min(100000, Math.abs((dims as number[]).reduce((a, b) => a * b, 1))) : 48;
      const fill = pick(r, [[0.1, -0.2], [3e38], [num('NaN')], [1e6, -1e6], [0]]);
      calls.push({ op, input: r() < 0.9 ? { data: { $f32: { length: Number.isFinite(len) ? len + (r() < 0.9 ? 0 : 1) : 48, fill } }, dims } : nasty(r), options: r() < 0.8 ? { intermediates: r() < 0.3 } : nasty(r) });
    } else if (op === 'segmentBatch') {
      const images = Array.from({ length: int(r, 1, 3) }, (_, k) => mutateImage(r, dir, c * 10 + k));
      calls.push({ op, input: r() < 0.9 ? images : nasty(r), options: family === 'options' || r() < 0.4 ? mutateOptions(r) : undefined });
    } else if (op === 'concurrent') {
      calls.push({ op, inputs: Array.from({ length: int(r, 2, 4) }, (_, k) => mutateImage(r, dir, c * 10 + k)), options: mutateOptions(r) });
    } else {
      calls.push({ op, input: mutateImage(r, dir, c * 10), options: family === 'options' || r() < 0.4 ? mutateOptions(r) : undefined });
    }
  }
  return { model, load, calls };
}
function mutateModelClean(dir: string): void {
  const b = baseModel(1);
  fs.writeFileSync(path.join(dir, 'model.safetensors'), encodeSafetensors(b.tensors, { config: JSON.stringify(b.config) }));
}

// ---- running --------------------------------------------------------------------------------------
interface Outcome {
  index: number;
  kind: 'ok' | 'coded' | 'uncoded' | 'crash' | 'hang';
  detail?: string;
  ms: number;
}

function runCase(index: number): Promise<Outcome> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `step-seg-fuzz-${index}-`));
  const spec = makeCase(index, dir);
  const file = path.join(dir, 'case.json');
  fs.writeFileSync(file, JSON.stringify(spec));
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [runner, file], {
      cwd: dir,
      env: { ...process.env, STEP_SEG_MEMORY_LIMIT_MB: '2048', STEP_SEG_NUM_THREADS: '1', UV_THREADPOOL_SIZE: '2', NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '', err = '', timedOut = false;
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err = (err + d).slice(-2000)));
    const timer = setTimeout(() => ((timedOut = true), child.kill('SIGKILL')), TIMEOUT);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
      let o: Outcome;
      const line = out.trim().split('\n').pop() ?? '';
      if (timedOut) o = { index, kind: 'hang', ms };
      else if (signal || code !== 0 || !line.startsWith('{')) o = { index, kind: 'crash', detail: `exit ${code} signal ${signal}: ${err.slice(-400)}`, ms };
      else {
        const res = JSON.parse(line);
        o = { index, kind: res.outcome, detail: res.outcome === 'ok' ? undefined : `${res.code ?? res.name}: ${res.message}`, ms };
      }
      if (o.kind === 'uncoded' || o.kind === 'crash' || o.kind === 'hang') {
        fs.mkdirSync(KEEP, { recursive: true });
        fs.cpSync(dir, path.join(KEEP, `case-${index}`), { recursive: true });
      }
      fs.rmSync(dir, { recursive: true, force: true });
      resolve(o);
    });
  });
}

(async () => {
  if (!fs.existsSync(path.join(root, 'dist', 'index.js'))) throw new Error('dist/ is missing: run `npm run build:ts` first');
  await prepareImages();
  const counts = { ok: 0, coded: 0, uncoded: 0, crash: 0, hang: 0 };
  const codes: Record<string, number> = {};
  const log = LOG ? fs.createWriteStream(LOG) : undefined;
  let next = 0, done = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < CASES) {
      const o = await runCase(next++);
      counts[o.kind]++;
      if (o.kind === 'coded') {
        const code = o.detail!.split(':')[0];
        codes[code] = (codes[code] ?? 0) + 1;
      }
      if (o.kind !== 'ok' && o.kind !== 'coded') console.log(`case ${o.index}: ${o.kind} ${o.detail ?? ''}`);
      log?.write(JSON.stringify(o) + '\n');
      if (++done % 250 === 0)
        console.log(`${done} cases, ${((performance.now() - t0) / 1000).toFixed(0)} s: ${JSON.stringify(counts)}`);
    }
  };
  await Promise.all(Array.from({ length: JOBS }, worker));
  log?.end();
  console.log(`seed ${SEED}: ${CASES} cases / ${counts.ok} ok / ${counts.coded} coded errors / ${counts.uncoded} uncoded errors / ${counts.crash} crashes / ${counts.hang} hangs`);
  console.log(`coded errors by code: ${JSON.stringify(codes)}`);
  process.exitCode = counts.uncoded || counts.crash || counts.hang ? 1 : 0;
})();
