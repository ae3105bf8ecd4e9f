// The CPU runs of gemm's and attention's case tables (scripts/cases): random inputs, plain
// double-precision references, and outputs poisoned with NaN before each run so an unwritten element fails. Run directly, this file runs the
// GEMM cases (float32 and bfloat16) and the bfloat16 attention cases and prints a JSON summary (the
// GEMM test runs it once per forced SIMD kernel, each in its own process: kernels are chosen once).
// bfloat16 references are double precision over inputs rounded to bfloat16 as the engine rounds them
// (toBf16), so the tolerance stays the float32 one: what remains is float32 accumulation.
import { loadBinding } from '../../lib/binding';
import { attentionCases } from '../../scripts/cases/attention';
import { type GemmCase, gemmCases } from '../../scripts/cases/gemm';
import { randn, rng } from '../../scripts/cases/random';
import { relL2 } from './compare';

const { ops } = loadBinding().binding;

export type Precision = 'fp32' | 'bf16';

/**
 * float32 values rounded to bfloat16 (kept as float32) as the engine and vcvtneps2bf16 round them:
 * nearest even on the upper 16 bits; zero and subnormals to a signed zero; NaN stays NaN.
 */
export function toBf16(x: Float32Array): Float32Array {
  const out = Float32Array.from(x), bits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i], exponent = u & 0x7f800000;
    if (exponent === 0x7f800000) bits[i] = (u & 0xffff0000) | (u & 0x007fffff ? 0x00400000 : 0);
    else if (exponent === 0) bits[i] = u & 0x80000000;
    else bits[i] = (((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16) >>> 0;
  }
  return out;
}

const erf = (x: number): number => {
  // Abramowitz-Stegun 7.1.26 is too coarse for 1e-6; use a series / continued fraction split.
  const t = Math.abs(x);
  if (t < 2.5) {
    let sum = t, term = t;
    for (let n = 1; n < 60; n++) {
      term *= (-t * t) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let f = 0;
  for (let n = 60; n >= 1; n--) f = (n / 2) / (t + f);
  return Math.sign(x) * (1 - Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f));
};

/**
 * Runs one case on the addon at `precision`, with w packed inside gemm and with w packed beforehand as
 * a model packs it (packW), and returns the larger relative L2 error against the double reference
 * over the operands of `reference` (default: those of `precision`, i.e. rounded to bfloat16 for bf16).
 */
export function runGemmCase(c: GemmCase, seed: number, precision: Precision = 'fp32', reference: Precision = precision): number {
  const rand = rng(seed);
  const lda = c.lda ?? c.K, ldc = c.ldc ?? c.N;
  const a = randn(c.M * lda, rand), w = randn(c.N * c.K, rand, (c.epilogue === 'relu6' ? 4 : 1) / Math.sqrt(c.K)); // relu6: reach the clamp
  const bias = c.bias ? randn(c.N, rand) : undefined;
  const colScale = c.colScale ? randn(c.N, rand) : undefined;
  const residual = randn(c.M * ldc, rand);
  const ra = reference === 'bf16' ? toBf16(a) : a, rw = reference === 'bf16' ? toBf16(w) : w;
  const ref = new Float64Array(c.M * c.N), got = new Float32Array(c.M * c.N);
  for (let m = 0; m < c.M; m++)
    for (let n = 0; n < c.N; n++) {
      let acc = bias ? bias[n] : 0;
      for (let k = 0; k < c.K; k++) acc += ra[m * lda + k] * rw[n * c.K + k];
      if (c.epilogue === 'gelu') acc = 0.5 * acc * (1 + erf(acc / Math.SQRT2));
      if (c.epilogue === 'residual') acc = residual[m * ldc + n] + (colScale ? colScale[n] : 1) * acc;
      if (c.epilogue === 'relu6') acc = Math.min(Math.max(acc, 0), 6);
      if (c.epilogue === 'sigmoid') acc = 1 / (1 + Math.exp(-acc));
      ref[m * c.N + n] = acc;
    }
  let worst = 0;
  for (const packW of [false, true]) {
    // residual epilogue runs in place (c aliases residual), as the model does; others start poisoned
    const out = c.epilogue === 'residual' ? residual.slice() : new Float32Array(c.M * ldc).fill(NaN);
    ops.gemm({ M: c.M, N: c.N, K: c.K, a, lda, w, bias, colScale, epilogue: c.epilogue, residual: out, c: out, ldc, packW, precision });
    for (let m = 0; m < c.M; m++) for (let n = 0; n < c.N; n++) got[m * c.N + n] = out[m * ldc + n];
    // padding columns between rows (ldc > N) must be left alone
    if (ldc > c.N && c.epilogue !== 'residual')
      for (let m = 0; m < c.M; m++) for (let n = c.N; n < ldc; n++) if (!Number.isNaN(out[m * ldc + n])) return Infinity;
    const err = relL2(got, ref);
    worst = Number.isNaN(err) ? Infinity : Math.max(worst, err);
  }
  return worst;
}

// ---- attention ---------------------------------------------------------------------------------

/**
 * Softmax attention in double precision. bf16: q, k and v rounded to bfloat16, and the unnormalised
 * probabilities exp(s - max) rounded to bfloat16 before they weight v, their sum taken unrounded, as
 * the engine (and FlashAttention's bf16 kernels) do.
 */
export function attentionRef(qkv: Float32Array, offsets: number[], H: number, D: number, scale: number, precision: Precision = 'fp32'): Float64Array {
  const x = precision === 'bf16' ? toBf16(qkv) : qkv;
  const C = H * D, out = new Float64Array(offsets[offsets.length - 1] * C);
  for (let b = 0; b + 1 < offsets.length; b++) {
    const t0 = offsets[b], T = offsets[b + 1] - t0;
    for (let h = 0; h < H; h++)
      for (let i = 0; i < T; i++) {
        const s = new Float64Array(T);
        let mx = -Infinity;
        for (let j = 0; j < T; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += x[(t0 + i) * 3 * C + h * D + d] * x[(t0 + j) * 3 * C + C + h * D + d];
          s[j] = dot * scale;
          mx = Math.max(mx, s[j]);
        }
        let sum = 0;
        for (let j = 0; j < T; j++) sum += s[j] = Math.exp(s[j] - mx);
        const p = precision === 'bf16' ? toBf16(Float32Array.from(s)) : s;
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j < T; j++) acc += p[j] * x[(t0 + j) * 3 * C + 2 * C + h * D + d];
          out[(t0 + i) * C + h * D + d] = acc / sum;
        }
      }
  }
  return out;
}

/** Runs one attention case at `precision` (output poisoned with NaN) and returns its relative L2 error against `reference`. */
export function runAttentionCase(c: (typeof attentionCases)[number], seed: number, precision: Precision = 'fp32', reference: Precision = precision): number {
  const rand = rng(seed);
  const offsets = [0];
  for (const n of c.lengths) offsets.push(offsets[offsets.length - 1] + n);
  const A = offsets[offsets.length - 1], C = c.H * c.D;
  const qkv = randn(A * 3 * C, rand, 1.5);
  const out = new Float32Array(A * C).fill(NaN);
  const scale = 1 / Math.sqrt(c.D);
  ops.attention({ batch: c.lengths.length, offsets: Int32Array.from(offsets), heads: c.H, headDim: c.D, scale, qkv, out, precision });
  const err = relL2(out, attentionRef(qkv, offsets, c.H, c.D, scale, reference));
  return Number.isNaN(err) ? Infinity : err;
}

/**
 * bf16 results whose bits the test compares across kernels: a product with no epilogue and no bias,
 * odd K past a K block, and an attention with an odd number of keys past a key block (the AVX512_BF16
 * path rounds P inside its softmax, the portable one in a second pass: the same bits either way).
 */
export function bf16Bits(): string {
  const rand = rng(77);
  const M = 45, N = 70, K = 801;
  const a = randn(M * K, rand), w = randn(N * K, rand);
  const c = new Float32Array(M * N).fill(NaN);
  ops.gemm({ M, N, K, a, lda: K, w, epilogue: 'none', c, ldc: N, packW: true, precision: 'bf16' });
  const T = 301, H = 2, D = 32, qkv = randn(T * 3 * H * D, rand, 1.5), out = new Float32Array(T * H * D).fill(NaN);
  ops.attention({ batch: 1, offsets: Int32Array.from([0, T]), heads: H, headDim: D, scale: 1 / Math.sqrt(D), qkv, out, precision: 'bf16' });
  return Buffer.from(c.buffer).toString('base64') + ':' + Buffer.from(out.buffer).toString('base64');
}

if (require.main === module) {
  const info = loadBinding().binding.cpuInfo();
  const cases = gemmCases();
  const errors = cases.map((c, i) => runGemmCase(c, 100 + i));
  // without a bfloat16 kernel a bf16 request runs float32: then that is the reference
  const ran: Precision = info.bf16Kernel === 'none' ? 'fp32' : 'bf16';
  const bf16 = cases.map((c, i) => runGemmCase(c, 100 + i, 'bf16', ran));
  const attention = attentionCases.map((c, i) => runAttentionCase(c, 200 + i, 'bf16', ran));
  console.log(JSON.stringify({ kernel: info.gemmKernel, bf16Kernel: info.bf16Kernel, errors, bf16, attention, bits: bf16Bits() }));
}
