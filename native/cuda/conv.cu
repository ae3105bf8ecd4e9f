// conv.cu: the CUDA side of native/cpu/conv.cpp: k x k convolution over NHWC maps with bias and
// ReLU6 fused (EfficientNet-Lite's dense stem and its depthwise convolutions), and avg_pool.
//   conv_kernel_depthwise  one thread per output element (b, oy, ox, c): consecutive threads take
//                          consecutive channels, so the x, weight and y accesses coalesce in NHWC. The
//                          taps that fall in the zero padding are skipped, as on the CPU; the sum runs
//                          over (ky, kx) in the CPU's order but with fma contraction, so results differ
//                          from the CPU's by float32 rounding only.
//   conv_kernel_dense      one thread per output element (b, oy, ox, co), sums over (ky, kx, ci) in
//                          the CPU's order; meant for the stem (in_c = 3), where the whole op is a few
//                          MFLOP: a tiled variant is the upgrade if a wider dense conv appears.
//   avg_pool_kernel        one thread per output element (i, j, c): the CPU's sums in the CPU's order
//                          (additions only, then one multiply), so bit-identical.
// Weights are read in PyTorch's layout (out_c, in_c / groups, k, k) directly (no reorder pass).
#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr int kThreads = 256;

struct ConvArgs {
  int batch, in_h, in_w, in_c, out_h, out_w, out_c, kernel, stride, pad;
  const float* x;     // (B, in_h, in_w, in_c)
  const float* w;     // (out_c, in_c / groups, k, k)
  const float* bias;  // (out_c) or null
  bool relu6;
  float* y;           // (B, out_h, out_w, out_c)
};

__device__ __forceinline__ float conv_activate(float v, bool relu6) { return relu6 ? fminf(fmaxf(v, 0.f), 6.f) : v; }

// Output element i of y as (b, oy, ox, c), and the valid tap ranges [ky0, ky1) x [kx0, kx1).
struct ConvSite {
  int b, oy, ox, c, iy0, ix0, ky0, ky1, kx0, kx1;
};
__device__ __forceinline__ ConvSite conv_site(const ConvArgs& a, int64_t i) {
  ConvSite s;
  s.c = int(i % a.out_c);
  int64_t pix = i / a.out_c;
  s.ox = int(pix % a.out_w), pix /= a.out_w;
  s.oy = int(pix % a.out_h), s.b = int(pix / a.out_h);
  s.iy0 = s.oy * a.stride - a.pad, s.ix0 = s.ox * a.stride - a.pad;
  s.ky0 = max(0, -s.iy0), s.ky1 = min(a.kernel, a.in_h - s.iy0);
  s.kx0 = max(0, -s.ix0), s.kx1 = min(a.kernel, a.in_w - s.ix0);
  return s;
}

__global__ void __launch_bounds__(kThreads) conv_kernel_depthwise(ConvArgs a, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const ConvSite s = conv_site(a, i);
  const int C = a.in_c, k = a.kernel;
  const float* x = a.x + int64_t(s.b) * a.in_h * a.in_w * C + s.c;  // channel c of image b
  const float* w = a.w + int64_t(s.c) * k * k;                       // (k, k)
  float acc = a.bias ? a.bias[s.c] : 0.f;
  for (int ky = s.ky0; ky < s.ky1; ++ky)
    for (int kx = s.kx0; kx < s.kx1; ++kx)
      acc += x[(int64_t(s.iy0 + ky) * a.in_w + s.ix0 + kx) * C] * w[ky * k + kx];
  a.y[i] = conv_activate(acc, a.relu6);
}

__global__ void __launch_bounds__(kThreads) conv_kernel_dense(ConvArgs a, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const ConvSite s = conv_site(a, i);
  const int Ci = a.in_c, k = a.kernel;
  const float* x = a.x + int64_t(s.b) * a.in_h * a.in_w * Ci;  // (in_h, in_w, in_c)
  const float* w = a.w + int64_t(s.c) * Ci * k * k;            // (in_c, k, k)
  float acc = a.bias ? a.bias[s.c] : 0.f;
  for (int ky = s.ky0; ky < s.ky1; ++ky)
    for (int kx = s.kx0; kx < s.kx1; ++kx) {
      const float* xp = x + (int64_t(s.iy0 + ky) * a.in_w + s.ix0 + kx) * Ci;  // (in_c)
      for (int ci = 0; ci < Ci; ++ci) acc += xp[ci] * w[(ci * k + ky) * k + kx];
    }
  a.y[i] = conv_activate(acc, a.relu6);
}

struct AvgPoolArgs {
  int in_h, in_w, C, factor, out_h, out_w;
  const float* x;  // (in_h, in_w, C)
  float* y;        // (out_h, out_w, C)
};

__global__ void __launch_bounds__(kThreads) avg_pool_kernel(AvgPoolArgs a, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int c = int(e % a.C);
  const int64_t pix = e / a.C;
  const int j = int(pix % a.out_w), i = int(pix / a.out_w), f = a.factor;
  float sum = 0.f;
  for (int dy = 0; dy < f; ++dy)
    for (int dx = 0; dx < f; ++dx) sum += a.x[((int64_t(i) * f + dy) * a.in_w + int64_t(j) * f + dx) * a.C + c];
  a.y[e] = sum * (1.f / float(f * f));
}

// ---- launchers ----------------------------------------------------------------------------------

void conv_launch(const ConvArgs& a, bool depthwise, cudaStream_t stream) {
  NvtxRange range("conv");
  const int64_t n = int64_t(a.batch) * a.out_h * a.out_w * a.out_c;
  const unsigned blocks = unsigned(ceil_div<int64_t>(n, kThreads));
  if (depthwise) launch<conv_kernel_depthwise>(blocks, kThreads, 0, stream, a, n);
  else launch<conv_kernel_dense>(blocks, kThreads, 0, stream, a, n);
  STEP_CUDA_CHECK_LAUNCH();
}

void avg_pool_launch(const AvgPoolArgs& a, cudaStream_t stream) {
  NvtxRange range("avg_pool");
  const int64_t n = int64_t(a.out_h) * a.out_w * a.C;
  launch<avg_pool_kernel>(unsigned(ceil_div<int64_t>(n, kThreads)), kThreads, 0, stream, a, n);
  STEP_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- public entries -----------------------------------------------------------------------------

void conv(const ConvParams& p, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.in_h > 0 && p.in_w > 0 && p.in_c > 0 && p.out_c > 0, "cuda::conv: empty map");
  STEP_CHECK(p.kernel > 0 && p.stride > 0 && p.pad >= 0 && p.in_h + 2 * p.pad >= p.kernel &&
                 p.in_w + 2 * p.pad >= p.kernel,
             "cuda::conv: bad kernel, stride or pad");
  STEP_CHECK(p.out_h == (p.in_h + 2 * p.pad - p.kernel) / p.stride + 1 &&
                 p.out_w == (p.in_w + 2 * p.pad - p.kernel) / p.stride + 1,
             "cuda::conv: output size does not match input, kernel, stride and pad");
  const bool depthwise = p.groups == p.in_c && p.out_c == p.in_c;
  STEP_CHECK(p.groups == 1 || depthwise, "cuda::conv: only groups = 1 or depthwise (groups = in_c = out_c)");
  const int64_t n = int64_t(p.batch) * p.out_h * p.out_w * p.out_c;
  if (n == 0) return;
  STEP_CHECK(ceil_div<int64_t>(n, kThreads) < (int64_t(1) << 31), "cuda::conv: output too large");
  STEP_CHECK(p.x && p.w && p.y, "cuda::conv: missing x, w or y");
  const ConvArgs a{p.batch, p.in_h, p.in_w, p.in_c, p.out_h, p.out_w, p.out_c, p.kernel, p.stride, p.pad,
                   p.x,     p.w,    p.bias, p.act == Activation::kRelu6, p.y};
  conv_launch(a, depthwise, as_stream(stream));
}

void avg_pool(const AvgPoolParams& p, void* stream) {
  STEP_CHECK(p.C > 0 && p.factor > 0 && p.out_h >= 0 && p.out_w >= 0 && int64_t(p.out_h) * p.factor <= p.in_h &&
                 int64_t(p.out_w) * p.factor <= p.in_w,
             "cuda::avg_pool: bad sizes (only whole blocks)");
  const int64_t n = int64_t(p.out_h) * p.out_w * p.C;
  if (n == 0) return;
  STEP_CHECK(p.x && p.y, "cuda::avg_pool: missing x or y");
  const AvgPoolArgs a{p.in_h, p.in_w, p.C, p.factor, p.out_h, p.out_w, p.x, p.y};
  avg_pool_launch(a, as_stream(stream));
}

}  // namespace step::cuda
