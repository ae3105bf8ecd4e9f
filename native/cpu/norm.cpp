// norm.cpp: LayerNorm over the channel dimension, rows optionally gathered through an index list.
// Two passes per row (mean, then variance of the centred values) in float32, as PyTorch's CPU kernel
// does, so the result matches timm to float32 rounding. Rows are independent: parallel over rows.
#include <cmath>

#include "../core/errors.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {

void layernorm(const LayerNormParams& p) {
  STEP_CHECK(p.eps > 0, "layernorm: eps must be set (> 0)");
  const int C = p.C;
  parallel_for(p.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = p.x + r * C;  // (C)
      float* y = p.y + r * C;        // (C)
      float mean = 0.f;
      for (int c = 0; c < C; ++c) mean += x[c];
      mean /= float(C);
      float var = 0.f;
      for (int c = 0; c < C; ++c) {
        float d = x[c] - mean;
        var += d * d;
      }
      float inv = 1.f / std::sqrt(var / float(C) + p.eps);
      for (int c = 0; c < C; ++c) y[c] = (x[c] - mean) * inv * p.gamma[c] + p.beta[c];
    }
  });
}

}  // namespace step::cpu
