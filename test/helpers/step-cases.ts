// The plain references of STEP's unshare (blend mode) and token_halt with agreement (issue 17), for the
// CPU op tests on the grid cases of scripts/cases/token_merge.ts (the CUDA twins run against the CPU).
import type { GridCase } from '../../scripts/cases/token_merge';

const f = Math.fround;

/** unshare in blend mode (ops.h) in float32 steps, in the engine's order: exactly its output. */
export function unshareBlendRef(c: GridCase, K: number, logits: Float32Array): Float32Array {
  const flat = new Float32Array(c.cells * K), out = new Float32Array(c.cells * K);
  for (let t = 0; t < c.tokens; t++) {
    const [b, row, col, S] = c.rects.subarray(4 * t, 4 * t + 4);
    for (let dy = 0; dy < S; dy++)
      for (let dx = 0; dx < S; dx++) flat.set(logits.subarray(t * K, t * K + K), (c.gridOffset[b] + (row + dy) * c.gridW[b] + col + dx) * K);
  }
  for (let t = 0; t < c.tokens; t++) {
    const [b, row, col, S] = c.rects.subarray(4 * t, 4 * t + 4);
    const gh = c.gridH[b], gw = c.gridW[b], half = Math.floor(S / 2), base = c.gridOffset[b];
    const weight = (o: number) => Math.min(1, 0.5 * (S + 1) - Math.abs(o));
    for (let dy = 0; dy < S; dy++)
      for (let dx = 0; dx < S; dx++) {
        const cell = base + (row + dy) * gw + col + dx;
        for (let k = 0; k < K; k++) {
          let acc = 0;
          for (let oy = -half; oy <= half; oy++)
            for (let ox = -half; ox <= half; ox++) {
              const y = Math.min(Math.max(row + dy + oy, 0), gh - 1), x = Math.min(Math.max(col + dx + ox, 0), gw - 1);
              acc = f(acc + f(f(weight(oy) * weight(ox)) * flat[(base + y * gw + x) * K + k]));
            }
          out[cell * K + k] = S === 1 ? flat[cell * K + k] : f(acc / (S * S));
        }
      }
  }
  return out;
}

/**
 * Which rows may halt by agreement (ops.h TokenHaltParams), and the cell labels after the op: each row's
 * argmax painted on its rect over `cellLabel`, then every cell bordering the rect must carry it.
 */
export function agreeRef(c: GridCase, K: number, logits: Float32Array, rectOfRow: Int32Array, cellLabel: Int32Array) {
  const labels = Int32Array.from(cellLabel), argmax = (r: number) => {
    let best = 0;
    for (let k = 1; k < K; k++) if (logits[r * K + k] > logits[r * K + best]) best = k;
    return best;
  };
  const rect = (r: number) => c.rects.subarray(4 * rectOfRow[r], 4 * rectOfRow[r] + 4);
  for (let r = 0; r < rectOfRow.length; r++) {
    if (rectOfRow[r] < 0) continue;
    const [b, row, col, S] = rect(r);
    for (let dy = 0; dy < S; dy++) for (let dx = 0; dx < S; dx++) labels[c.gridOffset[b] + (row + dy) * c.gridW[b] + col + dx] = argmax(r);
  }
  const agrees = Array.from(rectOfRow, (t, r) => {
    if (t < 0) return false;
    const [b, row, col, S] = rect(r);
    const gh = c.gridH[b], gw = c.gridW[b], at = (y: number, x: number) => labels[c.gridOffset[b] + y * gw + x];
    for (let i = 0; i < S; i++) {
      if (row > 0 && at(row - 1, col + i) !== argmax(r)) return false;
      if (row + S < gh && at(row + S, col + i) !== argmax(r)) return false;
      if (col > 0 && at(row + i, col - 1) !== argmax(r)) return false;
      if (col + S < gw && at(row + i, col + S) !== argmax(r)) return false;
    }
    return true;
  });
  return { labels, agrees };
}
