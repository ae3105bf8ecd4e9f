/**
 * bench-common.ts: what scripts/bench-cpu.ts and its segment() section (scripts/bench-segment.ts)
 * share: seeded random numbers, the median of timed runs, a meter of the CPU other processes used,
 * onnxruntime-node loaded on demand, the relative L2 error (the tests' too), ../shared's photos and a
 * plain text table.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

// Seeded uniform numbers: mulberry32 (cases/random.ts); weights are uniform with the std asked for ("normal-ish").
export { rng } from './cases/random';
export function fill(n: number, next: () => number, mean: number, std: number): Float32Array {
  const out = new Float32Array(n), half = std * Math.sqrt(3);
  for (let i = 0; i < n; i++) out[i] = mean + half * (2 * next() - 1);
  return out;
}

/** ||got - ref|| / ||ref|| in double precision; Infinity when any value of got is not finite (the tests' too). */
export function relL2(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`length ${got.length} != ${ref.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

/** ../shared beside the clone (real photos, data). */
export const sharedDir = path.resolve(__dirname, '..', '..', 'shared');
/** The photos in ../shared/images (none when it is absent). */
export function sharedImages(): string[] {
  const dir = path.join(sharedDir, 'images');
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => /\.(jpe?g|png|webp)$/i.test(f)).map((f) => path.join(dir, f));
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** `warmup` untimed calls, then the median of `runs` timed ones, and the last call's result. */
export async function timeRuns<T>(warmup: number, runs: number, once: () => Promise<T>) {
  let out: T | undefined;
  for (let i = 0; i < warmup; i++) out = await once();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    out = await once();
    ms.push(performance.now() - t0);
  }
  return { ms: median(ms), runs: ms, out: out as T };
}

// The share of the CPU used by every process but this one since the meter started (os.cpus()
// against cpuUsage()): above a few percent, the figures taken meanwhile were disturbed.
export function cpuMeter() {
  const busy = () => os.cpus().reduce((s, c) => s + c.times.user + c.times.nice + c.times.sys + c.times.irq, 0);
  const b0 = busy(), own0 = process.cpuUsage(), t0 = performance.now();
  return () => {
    const own = process.cpuUsage(own0);
    const others = busy() - b0 - (own.user + own.system) / 1000;
    return Math.max(0, others) / ((performance.now() - t0) * os.cpus().length);
  };
}

// The peer: onnxruntime-node, dynamic (not a dependency).
export type Ort = typeof import('onnxruntime-node');
export async function loadOrt(): Promise<{ ort?: Ort; why?: string }> {
  try {
    return { ort: (await import('onnxruntime-node')) as Ort };
  } catch (err) {
    return { why: (err as Error).message.split('\n')[0] };
  }
}
export const kOrtInstall = 'npm install --no-save --ignore-scripts onnxruntime-node@1.30.0';

/** An onnxruntime CPU session as the bench runs it: `threads` intra-op threads, sequential, every graph optimisation. */
export function ortSession(ort: Ort, onnxPath: string, threads: number) {
  return ort.InferenceSession.create(onnxPath, {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
}

export const fmt = (x: number | undefined, d: number) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
export const fmtExp = (x: number | undefined) => (x === undefined ? '-' : x.toExponential(1));

/** Prints a table: the first `left` columns left-aligned, the others right-aligned. */
export function printTable(head: string[], body: string[][], left: number): void {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < left ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  console.log('\n' + line(head));
  console.log(w.map((n) => '-'.repeat(n)).join('  '));
  for (const b of body) console.log(line(b));
}
