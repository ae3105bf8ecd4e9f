// Op cases shared by the op tests: random inputs, plain double-precision references, and outputs
// poisoned with NaN before each run so an unwritten element fails. Run directly, this file runs the
// GEMM cases and prints a JSON summary (the GEMM test runs it once per forced SIMD kernel).
import { loadBinding } from '../../lib/binding';
import { relL2 } from './compare';
import { randn, rng } from './random';

const { ops } = loadBinding().binding;

export interface GemmCase {
  M: number;
  N: number;
  K: number;
  epilogue: 'none' | 'gelu' | 'residual' | 'relu6' | 'sigmoid';
  bias: boolean;
  colScale: boolean;
  lda?: number;
  ldc?: number;
}

/** Shapes: ViT sizes, primes, ones, sizes just off any tile, strided operands. */
export function gemmCases(): GemmCase[] {
  const shapes: [number, number, number][] = [
    [1, 1, 1], [1, 7, 3], [5, 1, 9], [3, 5, 1], [17, 31, 13], [64, 64, 64], [65, 63, 67],
    [97, 130, 255], [321, 576, 192], [33, 11, 192], [200, 768, 48], [256, 1000, 17], [7, 2304, 96],
  ];
  const eps: GemmCase['epilogue'][] = ['none', 'gelu', 'residual'];
  const cases: GemmCase[] = [];
  shapes.forEach(([M, N, K], i) => {
    const epilogue = eps[i % 3];
    cases.push({ M, N, K, epilogue, bias: i % 2 === 0, colScale: epilogue === 'residual' && i % 4 < 2 });
  });
  cases.push({ M: 50, N: 40, K: 30, epilogue: 'residual', bias: true, colScale: true, lda: 37, ldc: 45 });
  cases.push({ M: 129, N: 65, K: 70, epilogue: 'gelu', bias: true, colScale: false, lda: 71, ldc: 66 });
  // EfficientNet's pointwise convolutions and the merge-policy heads; K past one K block (384)
  for (const [M, N, K] of [[97, 40, 17], [640, 96, 16], [33, 1, 320], [70, 33, 1000]] as const)
    for (const epilogue of ['relu6', 'sigmoid'] as const) cases.push({ M, N, K, epilogue, bias: true, colScale: false });
  return cases;
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
 * Runs one case on the addon, with w packed inside gemm and with w packed beforehand as a model packs
 * it (packW), and returns the larger relative L2 error against the double reference.
 */
export function runGemmCase(c: GemmCase, seed: number): number {
  const rand = rng(seed);
  const lda = c.lda ?? c.K, ldc = c.ldc ?? c.N;
  const a = randn(c.M * lda, rand), w = randn(c.N * c.K, rand, (c.epilogue === 'relu6' ? 4 : 1) / Math.sqrt(c.K)); // relu6: reach the clamp
  const bias = c.bias ? randn(c.N, rand) : undefined;
  const colScale = c.colScale ? randn(c.N, rand) : undefined;
  const residual = randn(c.M * ldc, rand);
  const ref = new Float64Array(c.M * c.N), got = new Float32Array(c.M * c.N);
  for (let m = 0; m < c.M; m++)
    for (let n = 0; n < c.N; n++) {
      let acc = bias ? bias[n] : 0;
      for (let k = 0; k < c.K; k++) acc += a[m * lda + k] * w[n * c.K + k];
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
    ops.gemm({ M: c.M, N: c.N, K: c.K, a, lda, w, bias, colScale, epilogue: c.epilogue, residual: out, c: out, ldc, packW });
    for (let m = 0; m < c.M; m++) for (let n = 0; n < c.N; n++) got[m * c.N + n] = out[m * ldc + n];
    // padding columns between rows (ldc > N) must be left alone
    if (ldc > c.N && c.epilogue !== 'residual')
      for (let m = 0; m < c.M; m++) for (let n = c.N; n < ldc; n++) if (!Number.isNaN(out[m * ldc + n])) return Infinity;
    const err = relL2(got, ref);
    worst = Number.isNaN(err) ? Infinity : Math.max(worst, err);
  }
  return worst;
}

if (require.main === module) {
  const errors = gemmCases().map((c, i) => runGemmCase(c, 100 + i));
  console.log(JSON.stringify({ kernel: loadBinding().binding.cpuInfo().gemmKernel, errors }));
}
