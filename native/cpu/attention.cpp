// attention.cpp: multi-head self-attention over a packed list of images (each image attends only to
// its own rows, offsets as in FlashAttention's cu_seqlens).
// Algorithm: for every (image, head), K is copied to a contiguous (T, D) panel and V transposed to
// (D, T), so both products run through the packed GEMM; queries are processed in blocks of kQueryBlock
// rows: scores = scale * Q_blk K^T (kQueryBlock x T), a numerically stable softmax per row
// (max-subtracted, float32), then out_blk = P V. Work items are (image, head, query block), spread over
// the thread pool; the GEMM calls inside run on the item's own thread.
// Memory: qkv (A, 3, H, D) as timm's qkv Linear writes it; out (A, H, D); per item a kQueryBlock x T
// score buffer, per (image, head) the K and V^T panels.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"
#include "parallel.h"
#include "vec_math.h"

namespace step::cpu {
namespace {

// ViT-S, 2 threads: 128 rows 412 ms at 512 px (64: 440 ms, 256: 449 ms); 3.5 s at 1024 px (256: 3.3 s).
constexpr int kQueryBlock = 128;

// Row-wise softmax of scale * s in place, (rows, T); the max is subtracted first, so every exponent
// is <= 0 and exp_nonpositive applies. The max and the sum run in kLanes independent partial results:
// without them the compiler keeps the float reductions in order and scalar (perf showed the softmax at
// 34% of a ViT-S forward at 1024 px, all scalar instructions).
constexpr int kLanes = 16;
STEP_SIMD_CLONES void softmax_rows(float* s, int rows, int T, float scale) {
  const int body = T - T % kLanes;
  for (int r = 0; r < rows; ++r, s += T) {
    float lane_max[kLanes], lane_sum[kLanes];
    for (int l = 0; l < kLanes; ++l) lane_max[l] = -INFINITY, lane_sum[l] = 0.f;
    for (int j = 0; j < body; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lane_max[l] = s[j + l] > lane_max[l] ? s[j + l] : lane_max[l];
    float mx = -INFINITY;
    for (int l = 0; l < kLanes; ++l) mx = std::max(mx, lane_max[l]);
    for (int j = body; j < T; ++j) mx = std::max(mx, s[j]);
    const float shift = mx * scale;
    for (int j = 0; j < body; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        s[j + l] = exp_nonpositive(s[j + l] * scale - shift);
        lane_sum[l] += s[j + l];
      }
    float sum = 0.f;
    for (int l = 0; l < kLanes; ++l) sum += lane_sum[l];
    for (int j = body; j < T; ++j) sum += (s[j] = exp_nonpositive(s[j] * scale - shift));
    const float inv = 1.f / sum;
    for (int j = 0; j < T; ++j) s[j] *= inv;
  }
}

struct HeadPanels {
  std::vector<float> k;   // (T, D)
  std::vector<float> vt;  // (D, T)
};

}  // namespace

void attention(const AttentionParams& p) {
  const int H = p.heads, D = p.head_dim, C = H * D, row = 3 * C;

  // Panels for every (image, head): filled in parallel, then read by the query blocks.
  std::vector<HeadPanels> panels(size_t(p.batch) * H);
  parallel_for(int64_t(p.batch) * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int b = int(item / H), h = int(item % H);
      int t0 = p.offsets[b], T = p.offsets[b + 1] - t0;
      HeadPanels& panel = panels[item];
      panel.k.resize(size_t(T) * D);
      panel.vt.resize(size_t(T) * D);
      for (int t = 0; t < T; ++t) {
        const float* k = p.qkv + int64_t(t0 + t) * row + C + h * D;
        const float* v = k + C;
        std::copy(k, k + D, panel.k.data() + int64_t(t) * D);
        for (int d = 0; d < D; ++d) panel.vt[int64_t(d) * T + t] = v[d];
      }
    }
  });

  // Work list of (image, head, first query row).
  struct Item {
    int b, h, q0;
  };
  std::vector<Item> items;
  for (int b = 0; b < p.batch; ++b) {
    int T = p.offsets[b + 1] - p.offsets[b];
    for (int h = 0; h < H; ++h)
      for (int q0 = 0; q0 < T; q0 += kQueryBlock) items.push_back({b, h, q0});
  }

  parallel_for(int64_t(items.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items[i];
      int t0 = p.offsets[it.b], T = p.offsets[it.b + 1] - t0;
      int rows = std::min(kQueryBlock, T - it.q0);
      const HeadPanels& panel = panels[size_t(it.b) * H + it.h];
      scores.resize(size_t(rows) * T);

      GemmParams qk;  // scores (rows, T) = Q_blk (rows, D) . K^T
      qk.M = rows, qk.N = T, qk.K = D;
      qk.a = p.qkv + int64_t(t0 + it.q0) * row + it.h * D, qk.lda = row;
      qk.w = panel.k.data();
      qk.c = scores.data(), qk.ldc = T;
      gemm(qk);

      softmax_rows(scores.data(), rows, T, p.scale);

      GemmParams pv;  // out_blk (rows, D) = P (rows, T) . V (T, D); V^T is the (N = D, K = T) weight
      pv.M = rows, pv.N = D, pv.K = T;
      pv.a = scores.data(), pv.lda = T;
      pv.w = panel.vt.data();
      pv.c = p.out + int64_t(t0 + it.q0) * C + it.h * D, pv.ldc = C;
      gemm(pv);
    }
  });
}

}  // namespace step::cpu
