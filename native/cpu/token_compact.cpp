// token_compact.cpp: early exits on the CPU: which tokens halt (token_halt), removing them from the
// packed list (token_compact), and filing logits under each token's rect (token_scatter); and the
// bookkeeping of the packed list around them: the rect of each row and every rect's exit at the start
// (token_rows_init), the exit of halted rects (token_exit_mark), the rect of each row after a
// compaction (token_gather) and packing the selected rects of a batch into one list (token_pack).
// token_halt works per image: confidence = max softmax probability = 1 / sum_k exp(l_k - l_max);
// candidates pass the threshold; per class the top_k most confident candidates (argmax = class) are
// kept as context, found by one sort of the candidates by (class, confidence desc, row). With
// agreement (ops.h) every row's label is painted on its rect's cells first, and only rows whose
// bordering cells carry their label are candidates.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/errors.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {

namespace {

int argmax(const float* l, int K) {
  int best = 0;
  for (int k = 1; k < K; ++k)
    if (l[k] > l[best]) best = k;
  return best;
}

// Agreement (ops.h): every cell just outside rect r's edges, inside the grid, has the label `label`.
bool agrees(const TokenHaltParams& p, const TokenRect& r, int label) {
  const int gh = p.grid_h[r.image], gw = p.grid_w[r.image], S = r.size;
  const int32_t* labels = p.cell_label + p.grid_offset[r.image];  // (gh, gw)
  for (int i = 0; i < S; ++i) {
    const int y = r.row + i, x = r.col + i;
    if (r.row > 0 && labels[(r.row - 1) * gw + x] != label) return false;
    if (r.row + S < gh && labels[(r.row + S) * gw + x] != label) return false;
    if (r.col > 0 && labels[y * gw + r.col - 1] != label) return false;
    if (r.col + S < gw && labels[y * gw + r.col + S] != label) return false;
  }
  return true;
}

}  // namespace

void token_halt(const TokenHaltParams& p) {
  STEP_CHECK(!std::isnan(p.threshold) && p.top_k >= 0, "token_halt: threshold or top_k not set");
  STEP_CHECK(!p.cell_label || (p.rect_of_row && p.rects && p.grid_offset && p.grid_h && p.grid_w), "token_halt: agreement needs the grids");
  if (p.cell_label) {  // every row's label onto the cells of its rect, before any row is judged
    const int64_t rows = p.offsets[p.batch];
    parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (p.rect_of_row[r] < 0) continue;
        const TokenRect& t = p.rects[p.rect_of_row[r]];
        const int label = argmax(p.logits + r * p.K, p.K), gw = p.grid_w[t.image];
        int32_t* labels = p.cell_label + p.grid_offset[t.image];
        for (int dy = 0; dy < t.size; ++dy)
          for (int dx = 0; dx < t.size; ++dx) labels[(t.row + dy) * gw + t.col + dx] = label;
      }
    });
  }
  parallel_for(p.batch, 1, [&](int64_t begin, int64_t end) {
    struct Candidate {
      int cls;
      float conf;
      int row;
    };
    std::vector<Candidate> cands;
    for (int64_t b = begin; b < end; ++b) {
      const int r0 = p.offsets[b], r1 = p.offsets[b + 1];
      cands.clear();
      for (int r = r0; r < r1; ++r) {
        p.halt[r] = 0;
        if (r - r0 < p.prefix) continue;
        const float* l = p.logits + int64_t(r) * p.K;
        const int best = argmax(l, p.K);
        double sum = 0;
        for (int k = 0; k < p.K; ++k) sum += std::exp(double(l[k]) - l[best]);
        const float conf = float(1.0 / sum);
        if (conf >= p.threshold && (!p.cell_label || agrees(p, p.rects[p.rect_of_row[r]], best))) cands.push_back({best, conf, r});
      }
      std::sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& b) {
        if (a.cls != b.cls) return a.cls < b.cls;
        if (a.conf != b.conf) return a.conf > b.conf;
        return a.row < b.row;
      });
      int rank = 0;
      for (size_t i = 0; i < cands.size(); ++i) {
        rank = (i > 0 && cands[i].cls == cands[i - 1].cls) ? rank + 1 : 0;
        if (rank >= p.top_k) p.halt[cands[i].row] = 1;
      }
    }
  });
}

void token_compact(const TokenCompactParams& p) {
  // Offsets first (a prefix sum over kept rows), then the row copies in parallel.
  p.new_offsets[0] = 0;
  for (int b = 0; b < p.batch; ++b) {
    int32_t kept = 0;
    for (int r = p.offsets[b]; r < p.offsets[b + 1]; ++r) {
      if (p.halt[r]) continue;
      p.src_row[p.new_offsets[b] + kept] = r;
      ++kept;
    }
    p.new_offsets[b + 1] = p.new_offsets[b] + kept;
  }
  const int64_t rows = p.new_offsets[p.batch];
  parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      std::memcpy(p.out + r * p.C, p.x + int64_t(p.src_row[r]) * p.C, size_t(p.C) * sizeof(float));
  });
}

void token_scatter(const TokenScatterParams& p) {
  parallel_for(p.rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (p.index[r] < 0 || (p.mask && !p.mask[r])) continue;
      std::memcpy(p.table + int64_t(p.index[r]) * p.K, p.src + r * p.K, size_t(p.K) * sizeof(float));
    }
  });
}

void token_rows_init(const TokenRowsInitParams& p) {
  for (int b = 0; b < p.batch; ++b)
    for (int r = p.offsets[b]; r < p.offsets[b + 1]; ++r) {
      const int rect = r - p.offsets[b] < p.prefix ? -1 : r - (b + 1) * p.prefix;
      p.rect_of_row[r] = rect;
      if (rect >= 0) p.rect_exit[rect] = p.depth;
    }
}

void token_exit_mark(const TokenExitMarkParams& p) {
  for (int r = 0; r < p.rows; ++r)
    if (p.halt[r] && p.rect_of_row[r] >= 0) p.rect_exit[p.rect_of_row[r]] = p.layer;
}

void token_gather(const TokenGatherParams& p) {
  for (int r = 0; r < p.rows; ++r) p.out[r] = p.in[p.src_row[r]];
}

void token_pack(const TokenPackParams& p) {
  int32_t n = 0;
  p.offsets[0] = 0;
  for (int b = 0; b < p.batch; ++b) {
    if (p.counts[b]) std::memcpy(p.rects + n, p.stage + p.grid_offset[b], size_t(p.counts[b]) * sizeof(TokenRect));
    n += p.counts[b];
    p.offsets[b + 1] = n + (b + 1) * p.prefix;
  }
  *p.rect_count = n;
}

}  // namespace step::cpu
