// conv.cpp: k x k convolution over NHWC maps with bias and activation fused, the CPU reference of
// ConvParams (EfficientNet-Lite's stem and depthwise convolutions; its 1 x 1 convolutions are gemms).
// avg_pool (the merge policy pools its stride-32 map to each window grid) lives here too.
//
// Algorithm: direct convolution, one output row (image b, row oy) per parallel_for item. Each output
// pixel starts from the bias and accumulates its k x k taps; taps that fall in the zero padding are
// skipped by clamping the tap range to the image once per row (ky) and once per pixel (kx), so the
// inner loops carry no bounds tests. The innermost loop runs over channels, which NHWC keeps
// contiguous in x, in the reordered weight and in y, so the compiler vectorises it for the baseline
// ISA (built without -march, so SSE2 on x86-64).
//   depthwise (groups = in_c = out_c):  y[c] = act(bias[c] + sum over taps of x[iy, ix, c] * w[ky, kx, c])
//   dense     (groups = 1):             y[:] = act(bias + sum over taps and ci of x[iy, ix, ci] * w[ky, kx, ci, :])
// Channels go in blocks of 32, then 8, then 1, each block's sums held in registers over all taps and
// written once (a template over the block width, so the fixed-length loops unroll).
// Speed (one thread, AMD EPYC, SSE2, on a shared machine so +-15%): 5-8 G multiply-adds/s on the
// trunk's depthwise shapes; 1.3x the version that accumulates each tap into y in memory for k = 5,
// within noise of it for k = 3. Two threads: 1.6-1.9x one.
//
// Layout: x (B, in_h, in_w, in_c), y (B, out_h, out_w, out_c), both NHWC float32. The PyTorch weight
// (out_c, in_c / groups, k, k) is reordered per call into a small buffer with the channel innermost:
// (k, k, C) for depthwise, (k, k, in_c, out_c) for dense.
//
// References: PyTorch Conv2d (padding = pad on every side, zero padding); timm efficientnet_lite0
// (conv_stem 3 x 3 stride 2, conv_dw 3 x 3 and 5 x 5, ReLU6).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../core/errors.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {
namespace {

// Multiply-adds per parallel chunk below which more threads cost more than they save.
constexpr int64_t kMinMacsPerChunk = 1 << 16;

// The taps of an output coordinate that fall inside the image: k in [begin, end).
struct TapRange {
  int origin, begin, end;  // origin: input coordinate of tap 0 (may be negative)
};
inline TapRange tap_range(int out, int stride, int pad, int kernel, int in) {
  const int origin = out * stride - pad;
  return {origin, std::max(0, -origin), std::min(kernel, in - origin)};
}

inline float activate(float v, Activation act) { return act == Activation::kRelu6 ? std::min(std::max(v, 0.f), 6.f) : v; }

// Channels [c0, c0 + N) of one output pixel of a depthwise convolution. The N sums stay in registers
// over all taps (N = 32 is eight SSE registers), so each tap costs two loads per 4 channels and no
// store. For k = 5 and C >= 672, N = 32 measured 1.2x faster than N = 16 and 1.4x faster than N = 8.
template <int N>
inline void depthwise_channels(const ConvParams& p, const float* x, const float* w, const float* bias, TapRange ty,
                               TapRange tx, int c0, float* y) {
  // x: (in_h, in_w, C) image; w: (k, k, C); bias: (C); y: (C) the output pixel
  const int C = p.in_c, k = p.kernel;
  float acc[N];
  for (int j = 0; j < N; ++j) acc[j] = bias[c0 + j];
  for (int ky = ty.begin; ky < ty.end; ++ky)
    for (int kx = tx.begin; kx < tx.end; ++kx) {
      const float* xp = x + (int64_t(ty.origin + ky) * p.in_w + tx.origin + kx) * C + c0;  // (N)
      const float* wp = w + int64_t(ky * k + kx) * C + c0;                                   // (N)
      for (int j = 0; j < N; ++j) acc[j] += xp[j] * wp[j];
    }
  for (int j = 0; j < N; ++j) y[c0 + j] = activate(acc[j], p.act);
}

// Channels [c0, c0 + N) of one output pixel of a dense convolution, sums in registers as above.
template <int N>
inline void dense_channels(const ConvParams& p, const float* x, const float* w, const float* bias, TapRange ty,
                           TapRange tx, int c0, float* y) {
  // x: (in_h, in_w, in_c) image; w: (k, k, in_c, out_c); bias: (out_c); y: (out_c) the output pixel
  const int Ci = p.in_c, Co = p.out_c, k = p.kernel;
  float acc[N];
  for (int j = 0; j < N; ++j) acc[j] = bias[c0 + j];
  for (int ky = ty.begin; ky < ty.end; ++ky)
    for (int kx = tx.begin; kx < tx.end; ++kx) {
      const float* xp = x + (int64_t(ty.origin + ky) * p.in_w + tx.origin + kx) * Ci;  // (in_c)
      const float* wp = w + int64_t(ky * k + kx) * Ci * Co + c0;                        // (in_c, out_c) from c0
      for (int ci = 0; ci < Ci; ++ci)
        for (int j = 0; j < N; ++j) acc[j] += xp[ci] * wp[int64_t(ci) * Co + j];
    }
  for (int j = 0; j < N; ++j) y[c0 + j] = activate(acc[j], p.act);
}

// Runs fn(ty, tx, x, y) for every output pixel, rows in parallel: ty, tx the valid taps, x the
// pixel's image (in_h, in_w, in_c), y the output pixel (out_c).
template <typename PixelFn>
void for_each_pixel(const ConvParams& p, int64_t macs_per_pixel, const PixelFn& fn) {
  const int64_t rows = int64_t(p.batch) * p.out_h;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerChunk / std::max<int64_t>(1, macs_per_pixel * p.out_w));
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const TapRange ty = tap_range(int(r % p.out_h), p.stride, p.pad, p.kernel, p.in_h);
      const float* x = p.x + (r / p.out_h) * p.in_h * p.in_w * p.in_c;  // (in_h, in_w, in_c)
      float* y_row = p.y + r * p.out_w * p.out_c;                       // (out_w, out_c)
      for (int ox = 0; ox < p.out_w; ++ox)
        fn(ty, tap_range(ox, p.stride, p.pad, p.kernel, p.in_w), x, y_row + int64_t(ox) * p.out_c);
    }
  });
}

void conv_depthwise(const ConvParams& p, const float* bias) {
  const int C = p.in_c, k = p.kernel;
  std::vector<float> w(size_t(k) * k * C);  // (k, k, C)
  for (int c = 0; c < C; ++c)
    for (int t = 0; t < k * k; ++t) w[size_t(t) * C + c] = p.w[size_t(c) * k * k + t];
  for_each_pixel(p, int64_t(C) * k * k, [&](TapRange ty, TapRange tx, const float* x, float* y) {
    int c0 = 0;
    for (; c0 + 32 <= C; c0 += 32) depthwise_channels<32>(p, x, w.data(), bias, ty, tx, c0, y);
    for (; c0 + 8 <= C; c0 += 8) depthwise_channels<8>(p, x, w.data(), bias, ty, tx, c0, y);
    for (; c0 < C; ++c0) depthwise_channels<1>(p, x, w.data(), bias, ty, tx, c0, y);
  });
}

void conv_dense(const ConvParams& p, const float* bias) {
  const int Ci = p.in_c, Co = p.out_c, k = p.kernel;
  std::vector<float> w(size_t(k) * k * Ci * Co);  // (k, k, in_c, out_c)
  for (int co = 0; co < Co; ++co)
    for (int ci = 0; ci < Ci; ++ci)
      for (int t = 0; t < k * k; ++t) w[(size_t(t) * Ci + ci) * Co + co] = p.w[(size_t(co) * Ci + ci) * k * k + t];
  for_each_pixel(p, int64_t(Ci) * Co * k * k, [&](TapRange ty, TapRange tx, const float* x, float* y) {
    int c0 = 0;
    for (; c0 + 32 <= Co; c0 += 32) dense_channels<32>(p, x, w.data(), bias, ty, tx, c0, y);
    for (; c0 + 8 <= Co; c0 += 8) dense_channels<8>(p, x, w.data(), bias, ty, tx, c0, y);
    for (; c0 < Co; ++c0) dense_channels<1>(p, x, w.data(), bias, ty, tx, c0, y);
  });
}

}  // namespace

void conv(const ConvParams& p) {
  STEP_CHECK(p.batch >= 0 && p.in_h > 0 && p.in_w > 0 && p.in_c > 0 && p.out_c > 0, "conv: empty map");
  STEP_CHECK(p.kernel > 0 && p.stride > 0 && p.pad >= 0 && p.in_h + 2 * p.pad >= p.kernel &&
                 p.in_w + 2 * p.pad >= p.kernel,
             "conv: bad kernel, stride or pad");
  STEP_CHECK(p.out_h == (p.in_h + 2 * p.pad - p.kernel) / p.stride + 1 &&
                 p.out_w == (p.in_w + 2 * p.pad - p.kernel) / p.stride + 1 && p.out_h > 0 && p.out_w > 0,
             "conv: output size does not match input, kernel, stride and pad");
  const bool depthwise = p.groups == p.in_c && p.out_c == p.in_c;
  STEP_CHECK(p.groups == 1 || depthwise, "conv: only groups = 1 or depthwise (groups = in_c = out_c)");
  std::vector<float> zeros;
  if (!p.bias) zeros.assign(p.out_c, 0.f);
  const float* bias = p.bias ? p.bias : zeros.data();  // (out_c)
  if (depthwise)
    conv_depthwise(p, bias);
  else
    conv_dense(p, bias);
}

void avg_pool(const AvgPoolParams& p) {
  const float inv = 1.f / float(p.factor * p.factor);
  parallel_for(p.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int j = 0; j < p.out_w; ++j) {
        float* y = p.y + (i * p.out_w + j) * p.C;  // (C)
        for (int c = 0; c < p.C; ++c) y[c] = 0.f;
        for (int dy = 0; dy < p.factor; ++dy)
          for (int dx = 0; dx < p.factor; ++dx) {
            const float* x = p.x + ((i * p.factor + dy) * p.in_w + j * p.factor + dx) * p.C;
            for (int c = 0; c < p.C; ++c) y[c] += x[c];
          }
        for (int c = 0; c < p.C; ++c) y[c] *= inv;
      }
  });
}

}  // namespace step::cpu
