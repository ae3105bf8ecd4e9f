// token_merge.cpp: superpatch merging (STEP's dCTS half) on the CPU.
// window_score is the training-free scorer (its definition is in ops.h: colour spread and the busiest
// patch's texture per window, from per-patch sums made in one pass over the pixels); superpatch_select
// turns scores into token rects, largest level first, with exact coverage.
// Tokens are then built from the rects (superpatches; ordinary patches are S = 1).
// patch_gather is the im2col of the patch embedding: a rect of S x S patches is area-downsampled to
// P x P pixels (each output pixel the mean of an S x S block) and written as one row laid out like the
// conv weight (channel, ky, kx), so the patch embedding is one GEMM over all rows.
// token_pos_embed assembles the packed list: per image its prefix tokens, then each rect's embedding
// plus the mean of the position embeddings of the patches it covers.
// unshare is the way back after the head: a token's logits go to every patch of its rect, then (blend)
// each patch of a superpatch averages them over a box of the superpatch's side (ops.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/errors.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {

void patch_gather(const PatchGatherParams& p) {
  const int P = p.patch, plane = p.height * p.width, row = 3 * P * P;
  parallel_for(p.tokens, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(P);  // one output row of P pixels
    for (int64_t t = begin; t < end; ++t) {
      const TokenRect& r = p.rects[t];
      const int S = r.size;
      const float inv_area = 1.f / float(S * S);
      const float* img = p.pixels + int64_t(r.image) * 3 * plane;  // (3, H, W)
      float* out = p.out + t * row;                                 // (3, P, P)
      const int y0 = r.row * P, x0 = r.col * P;
      for (int c = 0; c < 3; ++c) {
        for (int ky = 0; ky < P; ++ky) {
          const float* src = img + int64_t(c) * plane + int64_t(y0 + ky * S) * p.width + x0;
          float* o = out + (c * P + ky) * P;
          if (S == 1) {  // an ordinary patch: a copy of its row
            std::copy(src, src + P, o);
            continue;
          }
          // Each output pixel sums its S x S block row by row, left to right (the CUDA twin's order).
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int dy = 0; dy < S; ++dy, src += p.width)
            for (int kx = 0; kx < P; ++kx)
              for (int dx = 0; dx < S; ++dx) acc[kx] += src[kx * S + dx];
          for (int kx = 0; kx < P; ++kx) o[kx] = acc[kx] * inv_area;
        }
      }
    }
  });
}

void token_pos_embed(const TokenPosEmbedParams& p) {
  const int C = p.C;
  // Prefix rows: class / register tokens (+ their position embeddings).
  for (int b = 0; b < p.batch; ++b) {
    for (int i = 0; i < p.prefix; ++i) {
      float* out = p.out + int64_t(p.offsets[b] + i) * C;
      const float* tok = p.prefix_tokens + int64_t(i) * C;
      for (int c = 0; c < C; ++c) out[c] = tok[c] + (p.pos_prefix ? p.pos_prefix[int64_t(i) * C + c] : 0.f);
    }
  }
  // Rect rows, in image order: rect j of the whole list goes to row offsets[b] + prefix + (j - first_b).
  const int64_t rects = int64_t(p.offsets[p.batch]) - int64_t(p.batch) * p.prefix;
  parallel_for(rects, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const TokenRect& r = p.rects[j];
      float* out = p.out + (j + int64_t(r.image + 1) * p.prefix) * C;
      const float* emb = p.embedded + j * C;
      const int S = r.size;
      const float* grid = p.pos_grid + int64_t(p.grid_offset[r.image]) * C;  // (gh_b, gw_b, C)
      const int gw = p.grid_w[r.image];
      if (S == 1) {
        const float* pos = grid + (int64_t(r.row) * gw + r.col) * C;
        for (int c = 0; c < C; ++c) out[c] = emb[c] + pos[c];
        continue;
      }
      for (int c = 0; c < C; ++c) out[c] = 0.f;
      for (int dy = 0; dy < S; ++dy)
        for (int dx = 0; dx < S; ++dx) {
          const float* pos = grid + (int64_t(r.row + dy) * gw + r.col + dx) * C;
          for (int c = 0; c < C; ++c) out[c] += pos[c];
        }
      const float inv_area = 1.f / float(S * S);
      for (int c = 0; c < C; ++c) out[c] = emb[c] + out[c] * inv_area;
    }
  });
}

void unshare(const UnshareParams& p) {
  STEP_CHECK(p.mode == UnshareMode::kCopy || p.mode == UnshareMode::kBlend, "unshare: mode not set");
  STEP_CHECK(p.mode == UnshareMode::kCopy || (p.grid_h && p.flat && p.flat != p.grid), "unshare: blend needs grid_h and a flat workspace");
  const int K = p.K;
  float* copy = p.mode == UnshareMode::kCopy ? p.grid : p.flat;  // (cells, K)
  parallel_for(p.tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const TokenRect& r = p.rects[t];
      const float* src = p.logits + t * K;  // (K)
      for (int dy = 0; dy < r.size; ++dy)
        for (int dx = 0; dx < r.size; ++dx) {
          const int64_t cell = p.grid_offset[r.image] + int64_t(r.row + dy) * p.grid_w[r.image] + r.col + dx;
          float* dst = copy + cell * K;
          std::copy(src, src + K, dst);
        }
    }
  });
  if (p.mode == UnshareMode::kCopy) return;
  // Blend: each cell of a superpatch is the mean of the copy over the S x S box centred on it (ops.h).
  parallel_for(p.tokens, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(K);
    for (int64_t t = begin; t < end; ++t) {
      const TokenRect& r = p.rects[t];
      const int S = r.size, half = S / 2, gh = p.grid_h[r.image], gw = p.grid_w[r.image];
      const float* img = copy + int64_t(p.grid_offset[r.image]) * K;  // (gh, gw, K)
      float* out = p.grid + int64_t(p.grid_offset[r.image]) * K;
      const float area = float(S * S);
      auto weight = [&](int o) { return std::min(1.f, 0.5f * float(S + 1) - float(std::abs(o))); };
      for (int dy = 0; dy < S; ++dy)
        for (int dx = 0; dx < S; ++dx) {
          const int64_t cell = int64_t(r.row + dy) * gw + r.col + dx;
          if (S == 1) {
            std::copy(img + cell * K, img + cell * K + K, out + cell * K);
            continue;
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int oy = -half; oy <= half; ++oy) {
            const int y = std::clamp(r.row + dy + oy, 0, gh - 1);
            for (int ox = -half; ox <= half; ++ox) {
              const int x = std::clamp(r.col + dx + ox, 0, gw - 1);
              const float wgt = weight(oy) * weight(ox);
              const float* v = img + (int64_t(y) * gw + x) * K;
              for (int k = 0; k < K; ++k) acc[k] += wgt * v[k];
            }
          }
          for (int k = 0; k < K; ++k) out[cell * K + k] = acc[k] / area;
        }
    }
  });
}

}  // namespace step::cpu

namespace step::cpu {

void window_score(const WindowScoreParams& p) {
  STEP_CHECK(p.color_tau > 0 && p.texture_tau > 0, "window_score: color_tau and texture_tau must be set (> 0)");
  const int P = p.patch, cells = p.gh * p.gw;
  // Per patch: mean colour (3) and texture s_p, from sums over its valid pixels (one image pass).
  std::vector<float> mean(size_t(cells) * 3), texture(cells);
  parallel_for(p.gh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gy = begin; gy < end; ++gy)
      for (int gx = 0; gx < p.gw; ++gx) {
        double sum[3] = {0, 0, 0}, sq[3] = {0, 0, 0};
        const int y0 = int(gy) * P, y1 = std::min(p.h, y0 + P), x0 = gx * P, x1 = std::min(p.w, x0 + P);
        for (int y = y0; y < y1; ++y) {
          const uint8_t* px = p.image + (int64_t(y) * p.w + x0) * p.channels;
          for (int x = x0; x < x1; ++x, px += p.channels)
            for (int c = 0; c < 3; ++c) sum[c] += px[c], sq[c] += double(px[c]) * px[c];
        }
        const double n = std::max(1, (y1 - y0) * (x1 - x0));
        double var = 0;
        const int64_t cell = gy * p.gw + gx;
        for (int c = 0; c < 3; ++c) {
          const double m = sum[c] / n;
          mean[cell * 3 + c] = float(m);
          var += std::max(0.0, sq[c] / n - m * m);
        }
        texture[cell] = float(std::sqrt(var / 3));
      }
  });
  // Per window of each level, from the patch statistics.
  float* out = p.scores;
  for (int l = 0; l < p.num_levels; ++l) {
    const int S = p.levels[l], wh = p.gh / S, ww = p.gw / S;
    for (int wy = 0; wy < wh; ++wy)
      for (int wx = 0; wx < ww; ++wx) {
        float m[3] = {0, 0, 0}, t = 0;
        for (int dy = 0; dy < S; ++dy)
          for (int dx = 0; dx < S; ++dx) {
            const int64_t cell = int64_t(wy * S + dy) * p.gw + wx * S + dx;
            for (int c = 0; c < 3; ++c) m[c] += mean[cell * 3 + c];
            t = std::max(t, texture[cell]);
          }
        for (int c = 0; c < 3; ++c) m[c] /= float(S * S);
        float d2 = 0;
        for (int dy = 0; dy < S; ++dy)
          for (int dx = 0; dx < S; ++dx) {
            const int64_t cell = int64_t(wy * S + dy) * p.gw + wx * S + dx;
            float e = 0;
            for (int c = 0; c < 3; ++c) e += (mean[cell * 3 + c] - m[c]) * (mean[cell * 3 + c] - m[c]);
            d2 = std::max(d2, e / 3);
          }
        const float d = std::sqrt(d2);
        out[wy * ww + wx] = std::exp(-(d / p.color_tau) * (d / p.color_tau)) * std::exp(-(t / p.texture_tau) * (t / p.texture_tau));
      }
    out += int64_t(wh) * ww;
  }
}

void superpatch_select(const SuperpatchSelectParams& p) {
  const int cells = p.gh * p.gw;
  // owner[cell]: the top-left cell of the accepted window covering it, with its size; -1 if none.
  std::vector<int32_t> owner(cells, -1), owner_size(cells, 1);
  const float* scores = p.scores;
  for (int l = 0; l < p.num_levels; ++l) {
    const int S = p.levels[l], wh = p.gh / S, ww = p.gw / S;
    for (int wy = 0; wy < wh; ++wy)
      for (int wx = 0; wx < ww; ++wx) {
        if (!(scores[wy * ww + wx] >= p.thresholds[l])) continue;
        bool free = true;
        for (int dy = 0; dy < S && free; ++dy)
          for (int dx = 0; dx < S && free; ++dx) free = owner[(wy * S + dy) * p.gw + wx * S + dx] < 0;
        if (!free) continue;
        const int32_t top_left = (wy * S) * p.gw + wx * S;
        for (int dy = 0; dy < S; ++dy)
          for (int dx = 0; dx < S; ++dx) owner[(wy * S + dy) * p.gw + wx * S + dx] = top_left;
        owner_size[top_left] = S;
      }
    scores += int64_t(wh) * ww;
  }
  // Emit tokens in row-major order of their top-left patch.
  int32_t n = 0;
  std::vector<int32_t> token_at(cells, -1);
  for (int cell = 0; cell < cells; ++cell) {
    const int32_t top_left = owner[cell] < 0 ? cell : owner[cell];
    if (top_left == cell) {
      token_at[cell] = n;
      p.rects[n++] = {p.image, cell / p.gw, cell % p.gw, owner[cell] < 0 ? 1 : owner_size[cell]};
    }
    p.token_of_patch[cell] = token_at[top_left];
  }
  *p.count = n;
}

}  // namespace step::cpu
