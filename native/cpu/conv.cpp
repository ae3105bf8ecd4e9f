// conv.cpp: k x k convolution over NHWC maps with bias and activation fused, the CPU reference of
// ConvParams (EfficientNet-Lite's stem and depthwise convolutions; its 1 x 1 convolutions are gemms).
//
// Algorithm: direct convolution, one output row (image b, row oy) per parallel_for item. Each output
// pixel starts from the bias and accumulates its k x k taps; taps that fall in the zero padding are
// skipped by clamping the tap range to the image once per row (ky) and once per pixel (kx), so the
// inner loops carry no bounds tests. The innermost loop runs over channels, which NHWC keeps
// contiguous in x, in the reordered weight and in y, so the compiler vectorises it for the baseline
// ISA (built without -march).
//   depthwise (groups = in_c = out_c):  y[c] += x[iy, ix, c] * w[ky, kx, c]        over the taps
//   dense     (groups = 1):             y[:] += x[iy, ix, ci] * w[ky, kx, ci, :]    over taps and ci
// The output pixel (out_c floats, at most 4.5 KB here) stays in L1 while its taps are added.
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

// y += x * w, elementwise over n channels. __restrict lets the compiler vectorise without a
// run-time overlap test.
inline void madd(float* __restrict y, const float* __restrict x, const float* __restrict w, int n) {
  for (int c = 0; c < n; ++c) y[c] += x[c] * w[c];
}
// y += v * w over n channels (dense conv: one input channel value times a row of output weights).
inline void madd_scalar(float* __restrict y, float v, const float* __restrict w, int n) {
  for (int c = 0; c < n; ++c) y[c] += v * w[c];
}

inline void start(float* __restrict y, const float* __restrict bias, int n) {
  if (bias) {
    for (int c = 0; c < n; ++c) y[c] = bias[c];
  } else {
    for (int c = 0; c < n; ++c) y[c] = 0.f;
  }
}

inline void activate(float* y, Activation act, int n) {
  if (act == Activation::kRelu6)
    for (int c = 0; c < n; ++c) y[c] = std::min(std::max(y[c], 0.f), 6.f);
}

// The taps of an output coordinate that fall inside the image: k in [begin, end).
struct TapRange {
  int origin, begin, end;  // origin: input coordinate of tap 0 (may be negative)
};
inline TapRange tap_range(int out, int stride, int pad, int kernel, int in) {
  const int origin = out * stride - pad;
  return {origin, std::max(0, -origin), std::min(kernel, in - origin)};
}

void conv_depthwise(const ConvParams& p) {
  const int C = p.in_c, k = p.kernel;
  std::vector<float> w(size_t(k) * k * C);  // (k, k, C)
  for (int c = 0; c < C; ++c)
    for (int t = 0; t < k * k; ++t) w[size_t(t) * C + c] = p.w[size_t(c) * k * k + t];

  const int64_t rows = int64_t(p.batch) * p.out_h;
  const int64_t macs_per_row = int64_t(p.out_w) * C * k * k;
  parallel_for(rows, std::max<int64_t>(1, kMinMacsPerChunk / macs_per_row), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / p.out_h;
      const TapRange ty = tap_range(int(r % p.out_h), p.stride, p.pad, k, p.in_h);
      const float* x = p.x + b * p.in_h * p.in_w * C;    // (in_h, in_w, C) image b
      float* y_row = p.y + r * p.out_w * C;               // (out_w, C)
      for (int ox = 0; ox < p.out_w; ++ox) {
        const TapRange tx = tap_range(ox, p.stride, p.pad, k, p.in_w);
        float* y = y_row + int64_t(ox) * C;  // (C)
        start(y, p.bias, C);
        for (int ky = ty.begin; ky < ty.end; ++ky)
          for (int kx = tx.begin; kx < tx.end; ++kx)
            madd(y, x + (int64_t(ty.origin + ky) * p.in_w + tx.origin + kx) * C, w.data() + size_t(ky * k + kx) * C, C);
        activate(y, p.act, C);
      }
    }
  });
}

void conv_dense(const ConvParams& p) {
  const int Ci = p.in_c, Co = p.out_c, k = p.kernel;
  std::vector<float> w(size_t(k) * k * Ci * Co);  // (k, k, in_c, out_c)
  for (int co = 0; co < Co; ++co)
    for (int ci = 0; ci < Ci; ++ci)
      for (int t = 0; t < k * k; ++t) w[(size_t(t) * Ci + ci) * Co + co] = p.w[(size_t(co) * Ci + ci) * k * k + t];

  const int64_t rows = int64_t(p.batch) * p.out_h;
  const int64_t macs_per_row = int64_t(p.out_w) * Ci * Co * k * k;
  parallel_for(rows, std::max<int64_t>(1, kMinMacsPerChunk / macs_per_row), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / p.out_h;
      const TapRange ty = tap_range(int(r % p.out_h), p.stride, p.pad, k, p.in_h);
      const float* x = p.x + b * p.in_h * p.in_w * Ci;  // (in_h, in_w, in_c) image b
      float* y_row = p.y + r * p.out_w * Co;             // (out_w, out_c)
      for (int ox = 0; ox < p.out_w; ++ox) {
        const TapRange tx = tap_range(ox, p.stride, p.pad, k, p.in_w);
        float* y = y_row + int64_t(ox) * Co;  // (out_c)
        start(y, p.bias, Co);
        for (int ky = ty.begin; ky < ty.end; ++ky)
          for (int kx = tx.begin; kx < tx.end; ++kx) {
            const float* xp = x + (int64_t(ty.origin + ky) * p.in_w + tx.origin + kx) * Ci;  // (in_c)
            const float* wp = w.data() + size_t(ky * k + kx) * Ci * Co;                      // (in_c, out_c)
            for (int ci = 0; ci < Ci; ++ci) madd_scalar(y, xp[ci], wp + size_t(ci) * Co, Co);
          }
        activate(y, p.act, Co);
      }
    }
  });
}

}  // namespace

void conv(const ConvParams& p) {
  STEP_CHECK(p.batch >= 0 && p.in_h > 0 && p.in_w > 0 && p.in_c > 0 && p.out_c > 0, "conv: empty map");
  STEP_CHECK(p.kernel > 0 && p.stride > 0 && p.pad >= 0, "conv: bad kernel, stride or pad");
  STEP_CHECK(p.out_h == (p.in_h + 2 * p.pad - p.kernel) / p.stride + 1 &&
                 p.out_w == (p.in_w + 2 * p.pad - p.kernel) / p.stride + 1 && p.out_h > 0 && p.out_w > 0,
             "conv: output size does not match input, kernel, stride and pad");
  const bool depthwise = p.groups == p.in_c && p.out_c == p.in_c;
  STEP_CHECK(p.groups == 1 || depthwise, "conv: only groups = 1 or depthwise (groups = in_c = out_c)");
  if (depthwise)
    conv_depthwise(p);
  else
    conv_dense(p);
}

}  // namespace step::cpu
