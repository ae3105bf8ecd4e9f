// elementwise.cu: the memory-bound per-element ops of the encoder's input side on the GPU; the CUDA
// side of native/cpu/elementwise.cpp (image_normalize) and of the token-building half of
// native/cpu/token_merge.cpp (patch_gather, token_pos_embed), plus the float32 -> bf16 conversion
// that feeds float32 activations to the GEMM.
//   convert_to_bf16_kernel   grid-stride, 4 elements (one float4 in, 8 bytes out) per step when aligned.
//   image_normalize_kernel   one thread per output pixel, all three planes: (v * (1 / std)) + (-mean / std)
//                            with explicit roundings (__fmul_rn, __fadd_rn: no FMA contraction), so
//                            the result is bit-identical to the CPU's.
//   patch_gather_kernel      one block per token rect, threads over its 3 * P * P outputs (channel,
//                            ky, kx); consecutive threads read consecutive pixels. Same sums in the
//                            same order as the CPU.
//   token_pos_embed_kernel   one warp per row of the packed list: items 0 .. B * prefix - 1 are the
//                            prefix rows (image i / prefix), the rest are the rects in order; the
//                            total, offsets[B], is read on the device.
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
  float* out;          // (3, out_h, out_w)
};

__global__ void __launch_bounds__(kThreads) image_normalize_kernel(NormalizeArgs a) {
  const int64_t plane = int64_t(a.out_h) * a.out_w;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < plane; i += step) {
    const int y = int(i / a.out_w), x = int(i % a.out_w);
    if (y < a.h && x < a.w) {
      const uint8_t* px = a.src + (int64_t(y) * a.w + x) * a.channels;
#pragma unroll
      for (int c = 0; c < 3; ++c) a.out[c * plane + i] = __fadd_rn(__fmul_rn(float(px[c]), a.scale[c]), a.shift[c]);
    } else {
#pragma unroll
      for (int c = 0; c < 3; ++c) a.out[c * plane + i] = 0.f;
    }
  }
}

// ---- patch_gather -------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    patch_gather_kernel(PatchGatherParams p,                 // pixels (B, 3, H, W), rects (tokens)
                        const int32_t* __restrict__ tokens_device,
                        __nv_bfloat16* __restrict__ out_bf16) {  // (tokens, 3 * P * P), as p.out
  const int tokens = tokens_device ? min(*tokens_device, p.tokens) : p.tokens;
  const int t = blockIdx.x;
  if (t >= tokens) return;
  const TokenRect r = p.rects[t];
  const int P = p.patch, S = r.size, row = 3 * P * P;
  const int64_t plane = int64_t(p.height) * p.width;
  const float inv_area = 1.f / float(S * S);
  const float* img = p.pixels + int64_t(r.image) * 3 * plane;  // (3, H, W)
  const int y0 = r.row * P, x0 = r.col * P;
  for (int e = threadIdx.x; e < row; e += blockDim.x) {
    const int c = e / (P * P), ky = (e / P) % P, kx = e % P;
    float sum = 0.f;
    for (int dy = 0; dy < S; ++dy) {
      const float* src = img + c * plane + int64_t(y0 + ky * S + dy) * p.width + x0 + kx * S;
      for (int dx = 0; dx < S; ++dx) sum += src[dx];
    }
    const float v = S == 1 ? sum : __fmul_rn(sum, inv_area);
    if (p.out) p.out[int64_t(t) * row + e] = v;
    if (out_bf16) out_bf16[int64_t(t) * row + e] = __float2bfloat16_rn(v);
  }
}

// ---- token_pos_embed ----------------------------------------------------------------------------

constexpr int kRowsPerBlock = kThreads / 32;

__global__ void __launch_bounds__(kThreads) token_pos_embed_kernel(TokenPosEmbedParams p, int rows_bound) {
  const int total = min(p.offsets[p.batch], rows_bound);
  const int item = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (item >= total) return;  // warp-uniform; no block barrier in this kernel
  const int C = p.C, prefix_rows = p.batch * p.prefix;
  if (item < prefix_rows) {
    const int b = item / p.prefix, i = item % p.prefix;
    float* out = p.out + int64_t(p.offsets[b] + i) * C;
    const float* tok = p.prefix_tokens + int64_t(i) * C;
    const float* pos = p.pos_prefix ? p.pos_prefix + int64_t(i) * C : nullptr;
    for (int c = lane; c < C; c += 32) out[c] = tok[c] + (pos ? pos[c] : 0.f);
    return;
  }
  const int j = item - prefix_rows;  // rect index
  const TokenRect r = p.rects[j];
  float* out = p.out + (int64_t(j) + int64_t(r.image + 1) * p.prefix) * C;
  const float* emb = p.embedded + int64_t(j) * C;
  const float* grid = p.pos_grid + int64_t(p.grid_offset[r.image]) * C;  // (gh_b, gw_b, C)
  const int gw = p.grid_w[r.image], S = r.size;
  if (S == 1) {
    const float* pos = grid + (int64_t(r.row) * gw + r.col) * C;
    for (int c = lane; c < C; c += 32) out[c] = emb[c] + pos[c];
    return;
  }
  const float inv_area = 1.f / float(S * S);
  for (int c = lane; c < C; c += 32) {
    float sum = 0.f;
    for (int dy = 0; dy < S; ++dy)
      for (int dx = 0; dx < S; ++dx) sum += grid[(int64_t(r.row + dy) * gw + r.col + dx) * C + c];
    out[c] = __fadd_rn(emb[c], __fmul_rn(sum, inv_area));
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

void patch_gather_launch(const PatchGatherParams& p, const int32_t* tokens_device, __nv_bfloat16* out_bf16,
                         cudaStream_t stream) {
  NvtxRange range("patch_gather");
  launch<patch_gather_kernel>(p.tokens, kThreads, 0, stream, p, tokens_device, out_bf16);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_pos_embed_launch(const TokenPosEmbedParams& p, int rows_bound, cudaStream_t stream) {
  NvtxRange range("token_pos_embed");
  launch<token_pos_embed_kernel>(ceil_div(rows_bound, kRowsPerBlock), kThreads, 0, stream, p, rows_bound);
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
  NormalizeArgs a{p.src, p.h, p.w, p.channels, {}, {}, p.out_h, p.out_w, p.out};
  for (int c = 0; c < 3; ++c) {  // as the CPU computes them, on the host
    a.scale[c] = 1.f / p.std[c];
    a.shift[c] = -p.mean[c] / p.std[c];
  }
  image_normalize_launch(a, as_stream(stream));
}

void patch_gather(const PatchGatherParams& p, const PatchGatherDeviceExtras& x, void* stream) {
  STEP_CHECK(p.tokens >= 0 && p.patch > 0, "cuda::patch_gather: bad tokens or patch");
  if (p.tokens == 0) return;
  STEP_CHECK(p.pixels && p.rects, "cuda::patch_gather: null buffer");
  STEP_CHECK(p.out || x.out_bf16, "cuda::patch_gather: no output (out or out_bf16)");
  patch_gather_launch(p, x.tokens_device, as_bf16(x.out_bf16), as_stream(stream));
}

void token_pos_embed(const TokenPosEmbedParams& p, const TokenPosEmbedDeviceExtras& x, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.C > 0 && p.prefix >= 0, "cuda::token_pos_embed: bad batch, C or prefix");
  STEP_CHECK(x.rows_bound >= 0, "cuda::token_pos_embed: negative rows_bound");
  if (p.batch == 0 || x.rows_bound == 0) return;
  STEP_CHECK(p.offsets && p.out && p.grid_offset && p.grid_w, "cuda::token_pos_embed: null buffer");
  STEP_CHECK(p.prefix == 0 || p.prefix_tokens, "cuda::token_pos_embed: missing prefix_tokens");
  STEP_CHECK(x.rows_bound <= p.batch * p.prefix || (p.rects && p.embedded && p.pos_grid),
             "cuda::token_pos_embed: missing rects, embedded or pos_grid");
  token_pos_embed_launch(p, x.rows_bound, as_stream(stream));
}

}  // namespace step::cuda
