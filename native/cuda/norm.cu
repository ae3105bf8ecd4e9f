// norm.cu: LayerNorm over the channel dimension on the GPU, rows optionally gathered through an index
// list; the CUDA side of native/cpu/norm.cpp (same LayerNormParams).
//
// One warp per row, 8 rows per block of 256 threads. Two passes as the CPU does (the mean, then the
// mean of the squared centred values), float32, so results match it to float32 rounding (the sums
// are taken in a different order: 32 lane partials then a butterfly).
//   layernorm_kernel_simple  any C: lane l handles columns l, l + 32, ...; the row is read three
//                            times (mean, variance, output), the second and third time from L1.
//   layernorm_kernel_vec     C = 128 * kChunks (C <= 1024), 16-byte aligned rows: lane l holds
//                            float4 number l + 32 i of the row in registers, one global read per row.
// Outputs: float32 y and/or bf16 y_bf16 (the operand of the next GEMM), written in the same pass.
// Rows: the real count may live on the device (rows_device), with LayerNormParams::rows as the host
// bound that sizes the grid.
#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr int kThreads = 32 * kRowsPerBlock;

struct LayerNormArgs {
  int rows_bound, C;
  float eps;
  const float* x;                 // (rows or more, C)
  const float* gamma;             // (C)
  const float* beta;              // (C)
  float* y;                       // (rows, C) or null
  __nv_bfloat16* y_bf16;          // (rows, C) or null
  const int32_t* rows_device;     // (1) or null
};

// The row this warp normalises, or -1 past the real row count.
__device__ __forceinline__ int layernorm_row(const LayerNormArgs& a) {
  const int rows = a.rows_device ? min(*a.rows_device, a.rows_bound) : a.rows_bound;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  return row < rows ? row : -1;
}

__global__ void __launch_bounds__(kThreads) layernorm_kernel_simple(LayerNormArgs a) {
  const int row = layernorm_row(a), lane = threadIdx.x % 32;
  if (row < 0) return;  // warp-uniform; no block barrier in this kernel
  const int C = a.C;
  const float* x = a.x + int64_t(row) * C;  // (C)
  float sum = 0.f;
  for (int c = lane; c < C; c += 32) sum += x[c];
  const float mean = warp_sum(sum) / float(C);
  float var = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = x[c] - mean;
    var += d * d;
  }
  const float inv = 1.f / sqrtf(warp_sum(var) / float(C) + a.eps);
  const int64_t at = int64_t(row) * C;
  for (int c = lane; c < C; c += 32) {
    const float v = (x[c] - mean) * inv * a.gamma[c] + a.beta[c];
    if (a.y) a.y[at + c] = v;
    if (a.y_bf16) a.y_bf16[at + c] = __float2bfloat16_rn(v);
  }
}

template <int kChunks>
__global__ void __launch_bounds__(kThreads) layernorm_kernel_vec(LayerNormArgs a) {
  const int row = layernorm_row(a), lane = threadIdx.x % 32;
  if (row < 0) return;
  constexpr int C = 128 * kChunks;
  const float4* x = reinterpret_cast<const float4*>(a.x + int64_t(row) * C);
  float4 v[kChunks];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    v[i] = x[lane + 32 * i];
    sum += (v[i].x + v[i].y) + (v[i].z + v[i].w);
  }
  const float mean = warp_sum(sum) / float(C);
  float var = 0.f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const float d0 = v[i].x - mean, d1 = v[i].y - mean, d2 = v[i].z - mean, d3 = v[i].w - mean;
    var += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
  }
  const float inv = 1.f / sqrtf(warp_sum(var) / float(C) + a.eps);
  const float4* gamma = reinterpret_cast<const float4*>(a.gamma);
  const float4* beta = reinterpret_cast<const float4*>(a.beta);
  const int64_t at = int64_t(row) * C;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c4 = lane + 32 * i;
    const float4 g = gamma[c4], b = beta[c4];
    const float4 out = make_float4((v[i].x - mean) * inv * g.x + b.x, (v[i].y - mean) * inv * g.y + b.y,
                                   (v[i].z - mean) * inv * g.z + b.z, (v[i].w - mean) * inv * g.w + b.w);
    if (a.y) reinterpret_cast<float4*>(a.y + at)[c4] = out;
    if (a.y_bf16)
      reinterpret_cast<uint2*>(a.y_bf16 + at)[c4] = make_uint2(pack_bf16x2(out.x, out.y), pack_bf16x2(out.z, out.w));
  }
}

// ---- launchers ----------------------------------------------------------------------------------

void layernorm_launch_simple(const LayerNormArgs& a, cudaStream_t stream) {
  NvtxRange range("layernorm");
  launch<layernorm_kernel_simple>(ceil_div(a.rows_bound, kRowsPerBlock), kThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

template <int kChunks>
void layernorm_launch_vec(const LayerNormArgs& a, cudaStream_t stream) {
  NvtxRange range("layernorm");
  launch<layernorm_kernel_vec<kChunks>>(ceil_div(a.rows_bound, kRowsPerBlock), kThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

bool vec_fits(int C, bool aligned) { return aligned && C % 128 == 0 && C >= 128 && C <= 1024; }

}  // namespace

// ---- public entry -------------------------------------------------------------------------------

LayerNormKernel choose_layernorm_kernel(int C, bool aligned) {
  return vec_fits(C, aligned) ? LayerNormKernel::kVec : LayerNormKernel::kSimple;
}

void layernorm(const LayerNormParams& p, const LayerNormDeviceExtras& x, void* stream) {
  STEP_CHECK(p.rows >= 0 && p.C > 0, "cuda::layernorm: bad rows or C");
  STEP_CHECK(p.eps > 0, "cuda::layernorm: eps must be set (> 0)");
  if (p.rows == 0) return;
  STEP_CHECK(p.x && p.gamma && p.beta, "cuda::layernorm: missing x, gamma or beta");
  STEP_CHECK(p.y || x.y_bf16, "cuda::layernorm: no output (y or y_bf16)");

  const bool aligned = is_aligned(p.x, 16) && is_aligned(p.gamma, 16) && is_aligned(p.beta, 16) &&
                       (!p.y || is_aligned(p.y, 16)) && (!x.y_bf16 || is_aligned(x.y_bf16, 8));
  const LayerNormKernel kernel = x.kernel == LayerNormKernel::kAuto ? choose_layernorm_kernel(p.C, aligned) : x.kernel;
  STEP_CHECK(kernel == LayerNormKernel::kSimple || vec_fits(p.C, aligned),
             "cuda::layernorm: kernel vec needs C % 128 == 0, C <= 1024 and 16-byte aligned rows");

  const LayerNormArgs a{p.rows, p.C, p.eps, p.x, p.gamma, p.beta, p.y, as_bf16(x.y_bf16), x.rows_device};
  const cudaStream_t s = as_stream(stream);
  if (kernel == LayerNormKernel::kSimple) return layernorm_launch_simple(a, s);
  switch (p.C / 128) {
    case 1: return layernorm_launch_vec<1>(a, s);
    case 2: return layernorm_launch_vec<2>(a, s);
    case 3: return layernorm_launch_vec<3>(a, s);
    case 4: return layernorm_launch_vec<4>(a, s);
    case 5: return layernorm_launch_vec<5>(a, s);
    case 6: return layernorm_launch_vec<6>(a, s);
    case 7: return layernorm_launch_vec<7>(a, s);
    default: return layernorm_launch_vec<8>(a, s);
  }
}

}  // namespace step::cuda
