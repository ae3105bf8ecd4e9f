// token_merge.cpp: building tokens from token rects (superpatches; ordinary patches are S = 1).
// patch_gather is the im2col of the patch embedding: a rect of S x S patches is area-downsampled to
// P x P pixels (each output pixel the mean of an S x S block) and written as one row laid out like the
// conv weight (channel, ky, kx), so the patch embedding is one GEMM over all rows.
// token_pos_embed assembles the packed list: per image its prefix tokens, then each rect's embedding
// plus the mean of the position embeddings of the patches it covers.
// unshare is the way back after the head: a token's logits go to every patch of its rect.
#include <algorithm>

#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {

void patch_gather(const PatchGatherParams& p) {
  const int P = p.patch, plane = p.height * p.width, row = 3 * P * P;
  parallel_for(p.tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const TokenRect& r = p.rects[t];
      const int S = r.size;
      const float inv_area = 1.f / float(S * S);
      const float* img = p.pixels + int64_t(r.image) * 3 * plane;  // (3, H, W)
      float* out = p.out + t * row;                                 // (3, P, P)
      const int y0 = r.row * P, x0 = r.col * P;
      for (int c = 0; c < 3; ++c) {
        for (int ky = 0; ky < P; ++ky) {
          for (int kx = 0; kx < P; ++kx) {
            float sum = 0.f;
            for (int dy = 0; dy < S; ++dy) {
              const float* src = img + int64_t(c) * plane + int64_t(y0 + ky * S + dy) * p.width + x0 + kx * S;
              for (int dx = 0; dx < S; ++dx) sum += src[dx];
            }
            out[(c * P + ky) * P + kx] = S == 1 ? sum : sum * inv_area;
          }
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
  const int K = p.K;
  parallel_for(p.tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const TokenRect& r = p.rects[t];
      const float* src = p.logits + (t + int64_t(r.image + 1) * p.prefix) * K;  // (K)
      for (int dy = 0; dy < r.size; ++dy)
        for (int dx = 0; dx < r.size; ++dx) {
          const int64_t cell = p.grid_offset[r.image] + int64_t(r.row + dy) * p.grid_w[r.image] + r.col + dx;
          float* dst = p.grid + cell * K;
          std::copy(src, src + K, dst);
        }
    }
  });
}

}  // namespace step::cpu
