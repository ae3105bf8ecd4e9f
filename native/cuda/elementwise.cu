// elementwise.cu: the memory-bound per-element ops of the encoder's input side on the GPU; the CUDA
// side of native/cpu/elementwise.cpp (image_normalize), plus the float32 -> bf16 conversion that
// feeds float32 activations to the GEMM.
//   convert_to_bf16_kernel   grid-stride, 4 elements (one float4 in, 8 bytes out) per step when aligned.
//   image_normalize_kernel   one thread per output pixel, all three channels: (v * (1 / std)) + (-mean / std)
//                            with explicit roundings (__fmul_rn, __fadd_rn: no FMA contraction), so
//                            the result is bit-identical to the CPU's; planar (3, out_h, out_w) for the
//                            patch embedding or channels last (out_h, out_w, 3) for the policy CNN.
#include <algorithm>

#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr int kThreads = 256;

// ---- convert_to_bf16 ----------------------------------------------------------------------------

template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    convert_to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {  // (n), (n)
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (kVector) {
    for (; 4 * i + 3 < n; i += step) {
      const float4 v = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<uint2*>(y)[i] = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
    }
    // The n % 4 tail: elements n - n % 4 .. n - 1, one per thread of the first block.
    if (blockIdx.x == 0 && int64_t(threadIdx.x) < n % 4) {
      const int64_t t = n - n % 4 + threadIdx.x;
      y[t] = __float2bfloat16_rn(x[t]);
    }
  } else {
    for (; i < n; i += step) y[i] = __float2bfloat16_rn(x[i]);
  }
}

// ---- image_normalize ----------------------------------------------------------------------------

struct NormalizeArgs {
  const uint8_t* src;  // (h, w, channels)
  int h, w, channels;
  float scale[3], shift[3];
  int out_h, out_w;
  bool channels_last;
  float* out;          // (3, out_h, out_w), or (out_h, out_w, 3) when channels_last
};

__global__ void __launch_bounds__(kThreads) image_normalize_kernel(NormalizeArgs a) {
  const int64_t plane = int64_t(a.out_h) * a.out_w;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < plane; i += step) {
    const int y = int(i / a.out_w), x = int(i % a.out_w);
    if (y < a.h && x < a.w) {
      const uint8_t* px = a.src + (int64_t(y) * a.w + x) * a.channels;
#pragma unroll
      for (int c = 0; c < 3; ++c)
        a.out[a.channels_last ? 3 * i + c : c * plane + i] = __fadd_rn(__fmul_rn(float(px[c]), a.scale[c]), a.shift[c]);
    } else {
#pragma unroll
      for (int c = 0; c < 3; ++c) a.out[a.channels_last ? 3 * i + c : c * plane + i] = 0.f;
    }
  }
}

// ---- launchers ----------------------------------------------------------------------------------

// Grid-stride kernels: enough blocks to fill an H200 several times over, never more than the work.
int grid_stride_blocks(int64_t threads_needed) {
  return int(std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(threads_needed, kThreads), 132 * 16)));
}

void convert_to_bf16_launch(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream) {
  NvtxRange range("convert_to_bf16");
  if (is_aligned(x, 16) && is_aligned(y, 8)) {
    launch<convert_to_bf16_kernel<true>>(grid_stride_blocks(ceil_div<int64_t>(n, 4)), kThreads, 0, stream, x, y, n);
  } else {
    launch<convert_to_bf16_kernel<false>>(grid_stride_blocks(n), kThreads, 0, stream, x, y, n);
  }
  STEP_CUDA_CHECK_LAUNCH();
}

void image_normalize_launch(const NormalizeArgs& a, cudaStream_t stream) {
  NvtxRange range("image_normalize");
  launch<image_normalize_kernel>(grid_stride_blocks(int64_t(a.out_h) * a.out_w), kThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- public entries -----------------------------------------------------------------------------

void convert_to_bf16(const float* x, uint16_t* y, int64_t n, void* stream) {
  STEP_CHECK(n >= 0, "cuda::convert_to_bf16: negative size");
  if (n == 0) return;
  STEP_CHECK(x && y, "cuda::convert_to_bf16: null buffer");
  convert_to_bf16_launch(x, as_bf16(y), n, as_stream(stream));
}

void image_normalize(const ImageNormalizeParams& p, void* stream) {
  STEP_CHECK(p.h >= 0 && p.w >= 0 && p.out_h >= p.h && p.out_w >= p.w, "cuda::image_normalize: bad sizes");
  STEP_CHECK(p.channels == 3 || p.channels == 4, "cuda::image_normalize: channels must be 3 or 4");
  if (int64_t(p.out_h) * p.out_w == 0) return;
  STEP_CHECK(p.out && (p.src || int64_t(p.h) * p.w == 0), "cuda::image_normalize: null buffer");
  NormalizeArgs a{p.src, p.h, p.w, p.channels, {}, {}, p.out_h, p.out_w, p.channels_last, p.out};
  for (int c = 0; c < 3; ++c) {  // as the CPU computes them, on the host
    a.scale[c] = 1.f / p.std[c];
    a.shift[c] = -p.mean[c] / p.std[c];
  }
  image_normalize_launch(a, as_stream(stream));
}

}  // namespace step::cuda
