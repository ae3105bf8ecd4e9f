// upsample.cpp: resampling ops.
// upsample: bilinear (align_corners = False, border-clamped) from a patch grid of logits straight to
// the original image size, then argmax (and optionally softmax) per pixel. Sampling goes from output
// pixels through the resized image to grid cells in one step, so the padded border of the grid is never
// read as image: gx = (x + 0.5) * valid_w / out_w / P - 0.5.
// pos_resample: timm's resample_abs_pos_embed, i.e. torch.nn.functional.interpolate(mode="bicubic",
// align_corners=False, antialias=True). With antialias PyTorch uses PIL's separable filter: support
// 2 * max(scale, 1) input pixels, cubic kernel with a = -0.5, weights renormalised at the borders
// (not clamped indices). Done separably: rows first, then columns, in float32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {
namespace {

// One axis of the bilinear sampling: lower index, upper index and the upper weight, per output pixel.
struct Tap {
  int i0, i1;
  float w1;
};
std::vector<Tap> bilinear_taps(int out, int valid, int grid, int patch) {
  std::vector<Tap> taps(out);
  const double scale = double(valid) / double(out) / double(patch);
  for (int x = 0; x < out; ++x) {
    double g = (x + 0.5) * scale - 0.5;
    g = std::max(g, 0.0);  // align_corners = False clamps the source coordinate below at 0
    int i0 = std::min(int(g), grid - 1);
    int i1 = std::min(i0 + 1, grid - 1);
    taps[x] = {i0, i1, float(g - i0)};
  }
  return taps;
}

// PIL / PyTorch antialiased bicubic filter.
double cubic_aa(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Weights of each output index over input indices [first, first + weights.size()).
struct Filter {
  int first;
  std::vector<float> weights;
};
std::vector<Filter> aa_filters(int in, int out) {
  std::vector<Filter> filters(out);
  const double scale = double(in) / double(out);
  const double support = 2.0 * std::max(scale, 1.0);
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  for (int i = 0; i < out; ++i) {
    double center = scale * (i + 0.5);
    int xmin = std::max(int(center - support + 0.5), 0);  // truncation toward zero, as in PyTorch
    int xmax = std::min(int(center + support + 0.5), in);
    std::vector<double> w(std::max(xmax - xmin, 0));
    double total = 0.0;
    for (size_t j = 0; j < w.size(); ++j) total += (w[j] = cubic_aa((j + xmin - center + 0.5) * invscale));
    filters[i].first = xmin;
    for (double v : w) filters[i].weights.push_back(float(total != 0.0 ? v / total : 0.0));
  }
  return filters;
}

#if defined(__x86_64__)
// The label of one pixel from its four corners' K <= 16 logits: the same products and the same three
// adds in the same order as the per-pixel path's ((w00 l00 + w01 l01) + w10 l10) + w11 l11, one class
// per lane, fp-contract off so that no multiply-add is fused (which would round differently), and the
// first class with the largest value, as the scalar loop's strict > picks it: the same label bit for
// bit (test/ops/upsample.test.ts compares the two paths). About 3x fewer instructions for K = 11.
__attribute__((target("avx512f"), optimize("fp-contract=off"))) int interpolate_label_avx512(
    int K, const float* l00, const float* l01, const float* l10, const float* l11, float w00,
    float w01, float w10, float w11) {
  const __mmask16 m = __mmask16((1u << K) - 1);
  __m512 v = _mm512_mul_ps(_mm512_set1_ps(w00), _mm512_maskz_loadu_ps(m, l00));
  v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(w01), _mm512_maskz_loadu_ps(m, l01)));
  v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(w10), _mm512_maskz_loadu_ps(m, l10)));
  v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(w11), _mm512_maskz_loadu_ps(m, l11)));
  // the largest value in every lane: the unused lanes at -inf, then max with the halves, quarters,
  // pairs and neighbours swapped (zero-masked forms, every lane kept: the unmasked ones make g++ 12
  // warn, as in gemm.cpp)
  constexpr __mmask16 kAll = 0xffff;
  __m512 t = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), m, v);
  t = _mm512_maskz_max_ps(kAll, t, _mm512_maskz_shuffle_f32x4(kAll, t, t, _MM_SHUFFLE(1, 0, 3, 2)));
  t = _mm512_maskz_max_ps(kAll, t, _mm512_maskz_shuffle_f32x4(kAll, t, t, _MM_SHUFFLE(2, 3, 0, 1)));
  t = _mm512_maskz_max_ps(kAll, t, _mm512_maskz_permute_ps(kAll, t, _MM_SHUFFLE(1, 0, 3, 2)));
  t = _mm512_maskz_max_ps(kAll, t, _mm512_maskz_permute_ps(kAll, t, _MM_SHUFFLE(2, 3, 0, 1)));
  const __mmask16 at = _mm512_mask_cmp_ps_mask(m, v, t, _CMP_EQ_OQ);
  return at ? __builtin_ctz(unsigned(at)) : 0;  // no lane equal: a NaN among them (lib/ refuses those)
}

bool have_avx512f() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return have;
}
#endif

}  // namespace

void upsample(const UpsampleParams& p) {
  const int K = p.K;
  const std::vector<Tap> tx = bilinear_taps(p.out_w, p.valid_w, p.gw, p.patch);
  const std::vector<Tap> ty = bilinear_taps(p.out_h, p.valid_h, p.gh, p.patch);
  const int64_t plane = int64_t(p.out_h) * p.out_w;
  auto put = [&](int64_t pix, int label) {
    if (p.labels) p.labels[pix] = label;
    if (p.labels_u8) p.labels_u8[pix] = uint8_t(label);
    if (p.labels_u16) p.labels_u16[pix] = uint16_t(label);
  };
  // Labels only: every output pixel is a convex combination of its four grid corners, so where the
  // four corners share their argmax c, every pixel between them has label c (for k < c: c's logit is
  // strictly larger at each corner, for k > c at least as large). A margin far above float rounding
  // keeps that exactly what the per-pixel computation below gives; runs of pixels between the same
  // corners are then filled at once, and only cells on a class boundary are computed pixel by pixel.
  std::vector<int32_t> corner_label;
  std::vector<uint8_t> corner_clear;
  if (!p.probs) {
    const int64_t cells = int64_t(p.gh) * p.gw;
    corner_label.resize(size_t(cells));
    corner_clear.resize(size_t(cells));
    for (int64_t i = 0; i < cells; ++i) {
      const float* l = p.logits + i * K;
      int best = 0;
      float top = -INFINITY, second = -INFINITY, big = 0.f;
      for (int k = 0; k < K; ++k) {
        big = std::max(big, std::fabs(l[k]));
        if (l[k] > top) second = top, top = l[k], best = k;
        else if (l[k] > second) second = l[k];
      }
      corner_label[size_t(i)] = best;
      corner_clear[size_t(i)] = K == 1 || top - second > 1e-5f * big;
    }
  }
  parallel_for(p.out_h, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> v(K);
    for (int64_t y = begin; y < end; ++y) {
      const Tap& a = ty[y];
      const float* r0 = p.logits + int64_t(a.i0) * p.gw * K;  // (gw, K)
      const float* r1 = p.logits + int64_t(a.i1) * p.gw * K;
      // Pixel (x, y): the K logits bilinearly from its four grid corners into v; returns their argmax.
      auto interpolate = [&](int x) {
        const Tap& b = tx[x];
        const float w00 = (1 - a.w1) * (1 - b.w1), w01 = (1 - a.w1) * b.w1;
        const float w10 = a.w1 * (1 - b.w1), w11 = a.w1 * b.w1;
        const float *l00 = r0 + int64_t(b.i0) * K, *l01 = r0 + int64_t(b.i1) * K;
        const float *l10 = r1 + int64_t(b.i0) * K, *l11 = r1 + int64_t(b.i1) * K;
        int best = 0;
        for (int k = 0; k < K; ++k) {
          v[k] = w00 * l00[k] + w01 * l01[k] + w10 * l10[k] + w11 * l11[k];
          if (v[k] > v[best]) best = k;
        }
        return best;
      };
      for (int x = 0; x < p.out_w;) {
        if (!p.probs) {
          // the run of pixels that share this pixel's corners
          int x1 = x + 1;
          while (x1 < p.out_w && tx[x1].i0 == tx[x].i0 && tx[x1].i1 == tx[x].i1) ++x1;
          const int64_t c00 = int64_t(a.i0) * p.gw + tx[x].i0, c01 = int64_t(a.i0) * p.gw + tx[x].i1;
          const int64_t c10 = int64_t(a.i1) * p.gw + tx[x].i0, c11 = int64_t(a.i1) * p.gw + tx[x].i1;
          const int c = corner_label[size_t(c00)];
          if (corner_clear[size_t(c00)] && corner_clear[size_t(c01)] && corner_clear[size_t(c10)] && corner_clear[size_t(c11)] &&
              corner_label[size_t(c01)] == c && corner_label[size_t(c10)] == c && corner_label[size_t(c11)] == c) {
            const int64_t row = y * p.out_w;
            if (p.labels_u8) std::memset(p.labels_u8 + row + x, c, size_t(x1 - x));
            else
              for (int xx = x; xx < x1; ++xx) put(row + xx, c);
            x = x1;
            continue;
          }
          // a boundary cell: pixel by pixel, as below
#if defined(__x86_64__)
          if (K <= 16 && have_avx512f()) {
            const float *l00 = r0 + int64_t(tx[x].i0) * K, *l01 = r0 + int64_t(tx[x].i1) * K;
            const float *l10 = r1 + int64_t(tx[x].i0) * K, *l11 = r1 + int64_t(tx[x].i1) * K;
            for (; x < x1; ++x) {
              const float wx = tx[x].w1;
              put(y * p.out_w + x, interpolate_label_avx512(K, l00, l01, l10, l11, (1 - a.w1) * (1 - wx),
                                                            (1 - a.w1) * wx, a.w1 * (1 - wx), a.w1 * wx));
            }
            continue;
          }
#endif
          for (; x < x1; ++x) put(y * p.out_w + x, interpolate(x));
          continue;
        }
        const int best = interpolate(x);
        const int64_t pix = y * p.out_w + x;
        put(pix, best);
        const float top = v[best];
        float sum = 0.f;
        for (int k = 0; k < K; ++k) sum += (v[k] = std::exp(v[k] - top));
        for (int k = 0; k < K; ++k) p.probs[k * plane + pix] = v[k] / sum;
        ++x;
      }
    }
  });
}

void pos_resample(const PosResampleParams& p) {
  const int C = p.C;
  const std::vector<Filter> fy = aa_filters(p.src_h, p.dst_h);
  const std::vector<Filter> fx = aa_filters(p.src_w, p.dst_w);
  // Pass 1 (rows): (src_h, src_w, C) -> (dst_h, src_w, C)
  std::vector<float> mid(size_t(p.dst_h) * p.src_w * C, 0.f);
  for (int y = 0; y < p.dst_h; ++y)
    for (size_t j = 0; j < fy[y].weights.size(); ++j) {
      const float w = fy[y].weights[j];
      const float* src = p.src + int64_t(fy[y].first + int(j)) * p.src_w * C;
      float* dst = mid.data() + int64_t(y) * p.src_w * C;
      for (int64_t i = 0; i < int64_t(p.src_w) * C; ++i) dst[i] += w * src[i];
    }
  // Pass 2 (columns): (dst_h, src_w, C) -> (dst_h, dst_w, C)
  for (int y = 0; y < p.dst_h; ++y)
    for (int x = 0; x < p.dst_w; ++x) {
      float* dst = p.dst + (int64_t(y) * p.dst_w + x) * C;
      for (int c = 0; c < C; ++c) dst[c] = 0.f;
      for (size_t j = 0; j < fx[x].weights.size(); ++j) {
        const float w = fx[x].weights[j];
        const float* src = mid.data() + (int64_t(y) * p.src_w + fx[x].first + int(j)) * C;
        for (int c = 0; c < C; ++c) dst[c] += w * src[c];
      }
    }
}

}  // namespace step::cpu
