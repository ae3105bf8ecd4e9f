// The case table of the token-merging ops: random tilings of several grids by superpatches (odd grid
// sizes, a grid without superpatches, one patch) for unshare and token_halt with agreement, and the
// shapes of window_score, superpatch_select, patch_gather and token_pos_embed for the CUDA kernels
// against the CPU ops.

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

/** The grid cases: [grids, sides]. Sides 8, 4, 2 as shipped, an odd side, none (blend is the copy). */
export const kStepGridCases: [[number, number][], number[]][] = [
  [[[5, 7], [4, 4], [1, 1]], [4, 2]],
  [[[17, 24], [9, 13]], [8, 4, 2]],
  [[[12, 10]], [3]],
  [[[6, 9], [2, 3]], []],
  [[[40, 30]], [8, 4, 2]],
];

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

/** window_score: [h, w, channels, patch, sizes, colour block side, noise]. */
export const kWindowScoreCases: [number, number, number, number, number[], number, number][] = [
  [100, 150, 3, 16, [4, 2], 32, 3], // 7 x 10 patches, image edge inside the last patches
  [224, 224, 4, 16, [8, 4, 2], 64, 0], // flat blocks: many scores exactly 1
  [37, 53, 3, 14, [2], 20, 40],
  [9, 5, 3, 16, [1, 2], 4, 10], // a single 1 x 1 patch grid, a level that fits no window
  [512, 384, 3, 16, [8, 4, 2], 48, 6],
];

/** superpatch_select: [gh, gw, sizes, thresholds or random ones]; the CPU test takes the first six (its own thresholds). */
export const kSuperpatchSelectCases: [number, number, number[], number[] | 'random'][] = [
  [1, 1, [8, 4, 2], 'random'], [7, 13, [8, 4, 2], 'random'], [33, 17, [8, 4, 2], 'random'], [16, 16, [4, 2], 'random'],
  [9, 30, [6, 3], 'random'], [20, 21, [8, 3, 2], 'random'], [64, 96, [8, 4, 2], 'random'], [130, 70, [8, 4, 2], 'random'],
  [32, 48, [4, 2], [2, 2]], // nothing merged: the dense patch order
  [32, 48, [4, 2], [0, 0]], // everything merged at the largest level
  [33, 47, [4, 2], [0, 0]], // ... and the leftover border at the smaller level and as patches
  [12, 12, [2, 4], [0.5, 0.5]], // smallest level first: still exact coverage, as the CPU
];

/** unshare (copy): three grids, tiled by windows of side 4, 2 or 1; K = 1 and 19. */
export const kUnshareGrids = [[5, 7], [4, 4], [1, 1]];
export const kUnshareK = [1, 19];

/** patch_gather: [patch, grids of the images]. */
export const kPatchGatherCases = [[16, [[4, 6], [3, 5]]], [14, [[5, 4], [2, 2]]]] as const;

/** token_pos_embed: [C, prefix rows, with prefix position embeddings], over grids 4 x 6 and 3 x 5. */
export const kTokenPosEmbedCases = [[70, 2, true], [384, 1, false], [64, 0, false]] as const;
export const kTokenPosEmbedGrids = [[4, 6], [3, 5]];
