// The case table of the early-exit ops for the CUDA kernels against the CPU ops: token_halt (ties,
// top-k, prefix rows, none / all halting, an empty image, one row, uneven batches), token_compact
// (none / all halted, one left, empty images) and token_scatter (prefix rows, a mask, K = 1); and of
// the bookkeeping ops of the packed list: token_rows_init, token_exit_mark, token_gather, token_pack
// (one image, empty images, none / all halted, real counts below the bound, sizes off the 256-thread
// block).

/** token_halt: [lengths, K, prefix, threshold, topK]. */
export const kTokenHaltCases: [number[], number, number, number, number][] = [
  [[40, 3, 77], 4, 1, 0.5, 2],
  [[30], 3, 0, 0, 0], // every row halts
  [[25, 25, 0, 1], 5, 1, 0.0, 3], // an empty image and one with only its prefix row
  [[10], 2, 1, 1.01, 5], // none halts
  [[1], 3, 0, 0, 0], // one row
  [[600, 1025, 37], 19, 1, 0.6, 5],
];
/** token_halt with agreement, over each grid case of token_merge.ts: [prefix, threshold, topK]. */
export const kTokenHaltAgreeCases = [[1, 0.6, 1], [0, 0, 0], [1, 1.01, 2], [2, 0.9, 5]];

/** token_compact: [lengths, C, which rows halt]. */
export const kTokenCompactCases: [number[], number, 'random' | 'none' | 'all' | 'one'][] = [
  [[40, 3, 77], 70, 'random'], [[40, 3, 77], 384, 'none'], [[40, 3, 77], 64, 'all'], [[50, 20], 64, 'one'],
  [[0, 5, 0, 2000], 33, 'random'], [[1], 8, 'none'],
];

/** token_scatter: [rows, K, table rows, with a mask]. */
export const kTokenScatterCases = [[300, 19, 400, true], [57, 1, 57, false], [1, 5, 3, true]] as const;

/** token_rows_init: [lengths (each >= prefix), prefix, depth, rows bound above A]. */
export const kTokenRowsInitCases: [number[], number, number, number][] = [
  [[40, 3, 77], 1, 12, 0],
  [[0, 5, 0, 300], 0, 4, 5], // empty images
  [[1, 1, 257], 1, 12, 0], // images with only their prefix row
  [[256], 2, 3, 1], // one image, a whole block, the bound past it
  [[1], 1, 12, 0], // one row, no rect
  [[600, 1025, 37], 5, 12, 300],
];

/** token_exit_mark: [rows, rects, which rows halt, real rows below the bound]. */
export const kTokenExitMarkCases: [number, number, 'random' | 'none' | 'all' | 'one', number][] = [
  [300, 400, 'random', 0], [257, 257, 'all', 0], [256, 300, 'none', 0], [1, 1, 'one', 0],
  [1000, 1500, 'random', 13], [513, 600, 'all', 257], [0, 5, 'none', 0],
];

/** token_gather: [rows, rows of in, real rows below the bound]. */
export const kTokenGatherCases: [number, number, number][] = [
  [300, 400, 0], [257, 257, 0], [1, 1, 0], [255, 3000, 0], [1000, 1500, 11], [513, 513, 257], [0, 4, 0],
];

/** token_pack: [rects of each image, prefix]; each image's stage holds a few more cells than it selected. */
export const kTokenPackCases: [number[], number][] = [
  [[40, 3, 77], 1],
  [[0, 5, 0, 300], 0], // empty images
  [[257], 1], // one image, off the block
  [[0], 2], // one empty image
  [[600, 1025, 37, 0, 256], 2],
];
