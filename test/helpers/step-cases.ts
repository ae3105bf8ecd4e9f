// Cases for STEP's unshare (blend mode) and token_halt with agreement (issue 17), shared by the CPU op
// tests (against the plain references here) and the CUDA op test (against the CPU): random tilings of
// several grids by superpatches, odd grid sizes, a grid without superpatches, and one patch.

/** Random rects tiling a gh x gw grid: aligned windows of the given sides taken with probability 1/2. */
export function randomTiling(image: number, gh: number, gw: number, sides: number[], rand: () => number): number[][] {
  const taken = new Uint8Array(gh * gw), rects: number[][] = [];
  for (let r = 0; r < gh; r++)
    for (let c = 0; c < gw; c++) {
      if (taken[r * gw + c]) continue;
      let size = 1;
      for (const s of sides)
        if (r % s === 0 && c % s === 0 && r + s <= gh && c + s <= gw && rand() < 0.5) {
          let free = true;
          for (let dy = 0; dy < s; dy++) for (let dx = 0; dx < s; dx++) free &&= !taken[(r + dy) * gw + c + dx];
          if (free) {
            size = s;
            break;
          }
        }
      for (let dy = 0; dy < size; dy++) for (let dx = 0; dx < size; dx++) taken[(r + dy) * gw + c + dx] = 1;
      rects.push([image, r, c, size]);
    }
  return rects;
}

export interface GridCase {
  grids: [number, number][]; // (gh, gw) per image
  sides: number[]; // superpatch sides the tiling may use
  rects: Int32Array; // (tokens, 4) image, row, col, size
  tokens: number;
  gridOffset: Int32Array;
  gridH: Int32Array;
  gridW: Int32Array;
  cells: number;
}

/** Several images' grids tiled at random. */
export function gridCase(grids: [number, number][], sides: number[], rand: () => number): GridCase {
  const rects = grids.flatMap(([gh, gw], b) => randomTiling(b, gh, gw, sides, rand));
  const gridOffset = new Int32Array(grids.length);
  let cells = 0;
  grids.forEach(([gh, gw], b) => {
    gridOffset[b] = cells;
    cells += gh * gw;
  });
  return {
    grids, sides, rects: Int32Array.from(rects.flat()), tokens: rects.length, gridOffset,
    gridH: Int32Array.from(grids.map((g) => g[0])), gridW: Int32Array.from(grids.map((g) => g[1])), cells,
  };
}

/** The case table: [grids, sides]. Sides 8, 4, 2 as shipped, an odd side, none (blend is the copy). */
export const kStepGridCases: [[number, number][], number[]][] = [
  [[[5, 7], [4, 4], [1, 1]], [4, 2]],
  [[[17, 24], [9, 13]], [8, 4, 2]],
  [[[12, 10]], [3]],
  [[[6, 9], [2, 3]], []],
  [[[40, 30]], [8, 4, 2]],
];

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

/**
 * A packed active list over a grid case: per image `prefix` rows (rect -1), then its rects in a random
 * order with about a third left out (halted at an earlier exit); offsets and rect of each row.
 */
export function activeRows(c: GridCase, prefix: number, rand: () => number) {
  const offsets = [0], rectOfRow: number[] = [];
  c.grids.forEach((_, b) => {
    const mine = [];
    for (let t = 0; t < c.tokens; t++) if (c.rects[4 * t] === b && rand() < 0.67) mine.push(t);
    mine.sort(() => rand() - 0.5);
    rectOfRow.push(...new Array(prefix).fill(-1), ...mine);
    offsets.push(rectOfRow.length);
  });
  return { offsets: Int32Array.from(offsets), rectOfRow: Int32Array.from(rectOfRow) };
}
