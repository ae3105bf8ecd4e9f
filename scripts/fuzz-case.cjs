// One fuzz case (scripts/fuzz.ts), run in its own process: reads the case from argv[2] (a JSON file
// beside its binary blobs), runs its calls against the built package (dist/), and prints one JSON
// line: { outcome: 'ok' | 'coded' | 'uncoded', code?, message? }. A crash shows as a signal or an exit
// without that line, a hang as the parent's timeout.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const lib = require(path.join(root, 'dist', 'index.js'));

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'), (_, v) => {
  if (v && typeof v === 'object' && typeof v.$num === 'string') return Number(v.$num); // NaN, Infinity
  return v;
});
const dir = path.dirname(process.argv[2]);
const blob = (name) => fs.readFileSync(path.join(dir, name));

// Values JSON cannot carry: hostile objects and other types.
function special(kind) {
  switch (kind) {
    case 'proxy':
      return new Proxy({}, { get() { throw new Error('proxy get'); }, ownKeys() { throw new Error('proxy keys'); }, has() { return true; } });
    case 'getter':
      return { get size() { throw new TypeError('getter'); }, get data() { throw new TypeError('getter'); } };
    case 'symbol':
      return Symbol('s');
    case 'bigint':
      return 10n;
    case 'function':
      return () => 1;
    case 'date':
      return new Date();
    case 'sparse':
      return [, 'x'];
    case 'float64':
      return new Float64Array(12);
    case 'uint16':
      return new Uint16Array(12);
    case 'detached': {
      const b = new ArrayBuffer(48);
      const view = new Uint8Array(b);
      structuredClone(b, { transfer: [b] }); // the view's buffer is detached now
      return view;
    }
    default:
      return undefined;
  }
}

// Materialises a value: { $blob } -> Buffer, { $raw } -> raw image, { $special } -> special(), { $f32 } -> Float32Array
function value(v) {
  if (Array.isArray(v)) return v.map(value);
  if (!v || typeof v !== 'object') return v;
  if (typeof v.$blob === 'string') return blob(v.$blob);
  if (typeof v.$special === 'string') return special(v.$special);
  if (v.$f32) {
    const n = v.$f32.length, out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = v.$f32.fill[i % v.$f32.fill.length];
    return out;
  }
  if (v.$raw) {
    const r = v.$raw;
    const data = r.data === undefined ? undefined : value(r.data);
    return { data: data instanceof Buffer ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : data, width: value(r.width), height: value(r.height), channels: value(r.channels) };
  }
  if (typeof v.$path === 'string') return path.isAbsolute(v.$path) ? v.$path : path.join(dir, v.$path);
  const out = {};
  for (const [k, x] of Object.entries(v)) out[k] = value(x);
  return out;
}

(async () => {
  let model;
  try {
    model = await lib.loadModel(value(spec.model), value(spec.load));
    for (const call of spec.calls) {
      if (call.op === 'segment') await model.segment(value(call.input), value(call.options));
      else if (call.op === 'segmentBatch') await model.segmentBatch(value(call.input), value(call.options));
      else if (call.op === 'forwardFeatures') await model.forwardFeatures(value(call.input), value(call.options));
      else if (call.op === 'concurrent') await Promise.all(call.inputs.map((im) => model.segment(value(im), value(call.options))));
    }
    console.log(JSON.stringify({ outcome: 'ok' }));
  } catch (err) {
    const code = err && typeof err.code === 'string' ? err.code : undefined;
    const coded = err instanceof lib.StepError && /^ERR_STEP_/.test(code || '');
    console.log(JSON.stringify({ outcome: coded ? 'coded' : 'uncoded', code, name: err && err.name, message: String(err && err.message).slice(0, 300) }));
  } finally {
    if (model) model.dispose();
  }
})();
