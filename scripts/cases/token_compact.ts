// The case table of the early-exit ops for the CUDA kernels against the CPU ops: token_halt (ties,
// top-k, prefix rows, none / all halting, an empty image, one row, uneven batches), token_compact
// (none / all halted, one left, empty images) and token_scatter (prefix rows, a mask, K = 1).

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
