// token_compact.cpp: early exits on the CPU: which tokens halt (token_halt), removing them from the
// packed list (token_compact), and filing logits under each token's rect (token_scatter).
// token_halt works per image: confidence = max softmax probability = 1 / sum_k exp(l_k - l_max);
// candidates pass the threshold; per class the top_k most confident candidates (argmax = class) are
// kept as context, found by one sort of the candidates by (class, confidence desc, row).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/errors.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {

void token_halt(const TokenHaltParams& p) {
  STEP_CHECK(!std::isnan(p.threshold) && p.top_k >= 0, "token_halt: threshold or top_k not set");
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
        int best = 0;
        for (int k = 1; k < p.K; ++k)
          if (l[k] > l[best]) best = k;
        double sum = 0;
        for (int k = 0; k < p.K; ++k) sum += std::exp(double(l[k]) - l[best]);
        const float conf = float(1.0 / sum);
        if (conf >= p.threshold) cands.push_back({best, conf, r});
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

}  // namespace step::cpu
