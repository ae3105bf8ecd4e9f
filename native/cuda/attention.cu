// attention.cu: multi-head self-attention over a packed list of images on the GPU, each image over
// its own rows (offsets as FlashAttention's cu_seqlens); the CUDA side of native/cpu/attention.cpp.
//
// Two variants, chosen by choose_attention_kernel():
//   attention_kernel_naive  one warp per (image, head, query row): q in registers (lane l holds
//                           elements l, l + 32, ...), a loop over the image's keys with a warp-sum dot
//                           product per key and a scalar online softmax, all float32 with expf. Slow
//                           (a shuffle reduction per key) but simple: the reference for the flash
//                           kernel, and the fallback for head dims it does not cover.
//   attention_kernel_flash  FlashAttention-2's forward: a block of 4 warps owns 64 query rows of one
//                           (image, head), 16 rows per warp. Q is loaded once into registers as mma A
//                           fragments; then for each 64-key tile: S = Q K^T with bf16 mma.sync into
//                           float32 fragments, scaled to log2 units and masked past T, the online
//                           softmax (running row max m and sum l in float32, O rescaled by
//                           exp2(m_old - m_new)), P rounded to bf16 straight from the S fragments (the
//                           m16n8 accumulator layout of two adjacent key tiles is the m16k16 A layout),
//                           O += P V with V's fragments from ldmatrix.trans. O / l is written at the end.
//                           No T x T buffer exists anywhere. K and V tiles are single-buffered in shared
//                           memory, loaded by cp.async one phase ahead (V(j) while S(j) is computed,
//                           K(j+1) while P(j) V(j) is), as FlashAttention-2 does.
// Inputs: qkv (A, 3, H, D) bf16 (cp.async) or float32 (loaded and rounded to bf16 on the way into
// shared memory by the flash kernel; read as float32 by the naive one); out (A, H, D) float32 or bf16.
// Grid: (ceil(max_seqlen / rows per block), H, B); a block whose first query row is past its image's
// T exits at once, so the host needs only an upper bound of T and the offsets stay on the device.
// Tile sizes are FlashAttention-2's for sm_80 (64 x 64, 4 warps) and are not measured here yet.
#include <cmath>

#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"
#include "mma.cuh"

namespace step::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---- naive --------------------------------------------------------------------------------------

constexpr int kNaiveWarps = 8;

// kPerLane = ceil(D / 32) elements of q, k, v per lane.
template <int kPerLane, typename TIn, typename TOut>
__global__ void __launch_bounds__(kNaiveWarps * 32)
    attention_kernel_naive(const TIn* __restrict__ qkv,         // (A, 3, H, D)
                           const int32_t* __restrict__ offsets,  // (B + 1)
                           int H, int D, float scale,
                           TOut* __restrict__ out) {             // (A, H, D)
  const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x % 32;
  const int i = blockIdx.x * kNaiveWarps + threadIdx.x / 32;  // query row within the image
  const int row0 = offsets[b], T = offsets[b + 1] - row0;
  if (i >= T) return;  // warp-uniform; no block barrier follows
  const int C = H * D;
  const int64_t stride = 3 * int64_t(C);
  const TIn* q = qkv + (row0 + i) * stride + h * D;
  const TIn* k = qkv + row0 * stride + C + h * D;
  const TIn* v = k + C;

  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int d = lane + 32 * u;
    qr[u] = d < D ? to_float(q[d]) : 0.f;
    acc[u] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int j = 0; j < T; ++j, k += stride, v += stride) {
    float dot = 0.f;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
      const int d = lane + 32 * u;
      if (d < D) dot += qr[u] * to_float(k[d]);
    }
    const float s = warp_sum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float p = expf(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
      const int d = lane + 32 * u;
      acc[u] = acc[u] * correction + (d < D ? p * to_float(v[d]) : 0.f);
    }
    m = m_new;
  }
  const float inv = 1.f / l;
  TOut* o = out + int64_t(row0 + i) * C + h * D;
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < D) o[d] = from_float<TOut>(acc[u] * inv);
  }
}

// ---- flash --------------------------------------------------------------------------------------

constexpr int kFlashRows = 64;     // query rows per block, 16 per warp
constexpr int kFlashKeys = 64;     // keys per tile
constexpr int kFlashThreads = 128;

template <int D>
struct FlashShape {
  static constexpr int kLds = D + 8;  // shared row stride (elements): an odd multiple of 16 bytes
  static constexpr int kTileElems = kFlashRows * kLds;
  static constexpr int kSmemBytes = 3 * kTileElems * int(sizeof(__nv_bfloat16));  // Q, K, V tiles
  static_assert(D % 16 == 0 && D <= 128, "head dim of whole k16 steps, at most 128 (registers)");
  static_assert(kFlashRows == kFlashKeys, "one tile loader for Q, K and V");
  static_assert(kFlashRows * D / 8 % kFlashThreads == 0, "whole 16-byte chunks per thread");
};

// Copies `valid` rows (row stride `stride` elements) of one head's q, k or v, D elements each, into a
// kFlashRows x kLds bf16 tile; rows from `valid` on are zero-filled, so that padded V rows contribute
// 0 * 0 and never NaN. bf16 source: cp.async (the caller commits and waits).
template <int D>
__device__ __forceinline__ void flash_load_tile(__nv_bfloat16* tile, const __nv_bfloat16* src, int64_t stride,
                                                int valid, const __nv_bfloat16* base) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int step = 0; step < kFlashRows * kChunks / kFlashThreads; ++step) {
    const int c = threadIdx.x + step * kFlashThreads;
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool ok = r < valid;
    cp_async_16(tile + r * FlashShape<D>::kLds + col, ok ? src + r * stride + col : base, ok);
  }
}

// float32 source: plain 16-byte loads, rounded to bf16 and stored (visible after the next barrier).
template <int D>
__device__ __forceinline__ void flash_load_tile(__nv_bfloat16* tile, const float* src, int64_t stride, int valid,
                                                const float*) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int step = 0; step < kFlashRows * kChunks / kFlashThreads; ++step) {
    const int c = threadIdx.x + step * kFlashThreads;
    const int r = c / kChunks, col = (c % kChunks) * 8;
    uint4 packed = make_uint4(0, 0, 0, 0);
    if (r < valid) {
      const float4* p = reinterpret_cast<const float4*>(src + r * stride + col);
      const float4 x0 = p[0], x1 = p[1];
      packed = make_uint4(pack_bf16x2(x0.x, x0.y), pack_bf16x2(x0.z, x0.w), pack_bf16x2(x1.x, x1.y),
                          pack_bf16x2(x1.z, x1.w));
    }
    *reinterpret_cast<uint4*>(tile + r * FlashShape<D>::kLds + col) = packed;
  }
}

template <int D, typename TIn, typename TOut>
__global__ void __launch_bounds__(kFlashThreads, 1)
    attention_kernel_flash(const TIn* __restrict__ qkv,         // (A, 3, H, D)
                           const int32_t* __restrict__ offsets,  // (B + 1)
                           int H, float scale_log2,              // scale * log2(e)
                           TOut* __restrict__ out) {             // (A, H, D)
  using Shape = FlashShape<D>;
  constexpr int kLds = Shape::kLds;
  STEP_DYNAMIC_SMEM(unsigned char, attention_smem);
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(attention_smem);  // (64, D) query tile
  __nv_bfloat16* ks = qs + Shape::kTileElems;                            // (64, D) key tile
  __nv_bfloat16* vs = ks + Shape::kTileElems;                            // (64, D) value tile

  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kFlashRows;
  const int row0 = offsets[b], T = offsets[b + 1] - row0;
  if (q0 >= T) return;  // whole block, before any barrier
  const int C = H * D;
  const int64_t stride = 3 * int64_t(C);
  const TIn* q_src = qkv + (row0 + q0) * stride + h * D;
  const TIn* k_src = qkv + row0 * stride + C + h * D;
  const TIn* v_src = k_src + C;
  const int n_tiles = ceil_div(T, kFlashKeys);

  // Prologue: group 0 = Q and K(0), group 1 = V(0).
  flash_load_tile<D>(qs, q_src, stride, min(kFlashRows, T - q0), qkv);
  flash_load_tile<D>(ks, k_src, stride, min(kFlashKeys, T), qkv);
  cp_async_commit();
  flash_load_tile<D>(vs, v_src, stride, min(kFlashKeys, T), qkv);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, tc = 2 * (lane % 4);
  uint32_t qf[D / 16][4];  // this warp's 16 query rows as A fragments, one per k16 step of D
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) ldmatrix_x4(qf[kd], qs + (warp * 16 + lane % 16) * kLds + kd * 16 + (lane / 16) * 8);

  // Thread state for rows g = lane / 4 (index 0) and g + 8 (index 1) of the warp's 16.
  float o[D / 8][4];  // O fragments: n8 tile di holds columns 8 di + tc, + 1
#pragma unroll
  for (int di = 0; di < D / 8; ++di) o[di][0] = o[di][1] = o[di][2] = o[di][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};  // running max of the scaled scores, log2 units
  float l[2] = {0.f, 0.f};              // running sum of exp2(s - m) over this thread's columns

  for (int j = 0; j < n_tiles; ++j) {
    const int j0 = j * kFlashKeys;
    // S = Q K(j)^T: 16 x 64 per warp, eight n8 fragments.
    float s[kFlashKeys / 8][4];
#pragma unroll
    for (int ni = 0; ni < kFlashKeys / 8; ++ni) s[ni][0] = s[ni][1] = s[ni][2] = s[ni][3] = 0.f;
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
#pragma unroll
      for (int np = 0; np < kFlashKeys / 16; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, ks + (np * 16 + (lane & 7) + (lane >> 4) * 8) * kLds + kd * 16 + ((lane >> 3) & 1) * 8);
        mma_bf16_16816(s[2 * np], qf[kd], r[0], r[1]);
        mma_bf16_16816(s[2 * np + 1], qf[kd], r[2], r[3]);
      }
    }
    // Scale to log2 units; keys past T get -inf (p = 0). Every tile holds at least one real key, so
    // each row max below is finite.
    const bool ragged = j0 + kFlashKeys > T;
#pragma unroll
    for (int ni = 0; ni < kFlashKeys / 8; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[ni][e] *= scale_log2;
        if (ragged && j0 + ni * 8 + tc + (e & 1) >= T) s[ni][e] = -INFINITY;
      }
    // Online softmax, per row half: the 4 threads of a quad share a row.
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int ni = 0; ni < kFlashKeys / 8; ++ni) mx = fmaxf(mx, fmaxf(s[ni][2 * hr], s[ni][2 * hr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[hr], mx);
      const float alpha = exp2f(m[hr] - m_new);  // 0 on the first tile (m = -inf)
      float sum = 0.f;
#pragma unroll
      for (int ni = 0; ni < kFlashKeys / 8; ++ni) {
        s[ni][2 * hr] = exp2f(s[ni][2 * hr] - m_new);
        s[ni][2 * hr + 1] = exp2f(s[ni][2 * hr + 1] - m_new);
        sum += s[ni][2 * hr] + s[ni][2 * hr + 1];
      }
      l[hr] = l[hr] * alpha + sum;
      m[hr] = m_new;
#pragma unroll
      for (int di = 0; di < D / 8; ++di) o[di][2 * hr] *= alpha, o[di][2 * hr + 1] *= alpha;
    }

    // V(j) has landed and every warp is done with K(j): start K(j + 1).
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_tiles) flash_load_tile<D>(ks, k_src + (j0 + kFlashKeys) * stride, stride, min(kFlashKeys, T - j0 - kFlashKeys), qkv);
    cp_async_commit();

    // O += P V(j): P's A fragments for keys 16 kk .. 16 kk + 15 are S fragments 2 kk and 2 kk + 1.
#pragma unroll
    for (int kk = 0; kk < kFlashKeys / 16; ++kk) {
      const uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLds + dp * 16 + (lane >> 4) * 8);
        mma_bf16_16816(o[2 * dp], pa, r[0], r[1]);
        mma_bf16_16816(o[2 * dp + 1], pa, r[2], r[3]);
      }
    }

    // K(j + 1) has landed and every warp is done with V(j): start V(j + 1).
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_tiles) flash_load_tile<D>(vs, v_src + (j0 + kFlashKeys) * stride, stride, min(kFlashKeys, T - j0 - kFlashKeys), qkv);
    cp_async_commit();
  }
  cp_async_wait<0>();

  // O / l, l summed over the quad first (each thread summed its own columns).
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float sum = l[hr];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = 1.f / sum;
    const int i = q0 + warp * 16 + lane / 4 + 8 * hr;
    if (i >= T) continue;
    TOut* dst = out + int64_t(row0 + i) * C + h * D + tc;
#pragma unroll
    for (int di = 0; di < D / 8; ++di) store_pair(dst + di * 8, o[di][2 * hr] * inv, o[di][2 * hr + 1] * inv);
  }
}

// ---- launchers ----------------------------------------------------------------------------------

template <int kPerLane, typename TIn, typename TOut>
void attention_launch_naive(const AttentionParams& p, int max_seqlen, const TIn* qkv, TOut* out, cudaStream_t stream) {
  NvtxRange range("attention");
  const dim3 grid(ceil_div(max_seqlen, kNaiveWarps), p.heads, p.batch);
  launch<attention_kernel_naive<kPerLane, TIn, TOut>>(grid, kNaiveWarps * 32, 0, stream, qkv, p.offsets, p.heads,
                                                      p.head_dim, p.scale, out);
  STEP_CUDA_CHECK_LAUNCH();
}

template <int D, typename TIn, typename TOut>
void attention_launch_flash(const AttentionParams& p, int max_seqlen, const TIn* qkv, TOut* out, cudaStream_t stream) {
  NvtxRange range("attention");
  static std::atomic<uint64_t> smem_configured{0};
  ensure_dynamic_smem(attention_kernel_flash<D, TIn, TOut>, FlashShape<D>::kSmemBytes, smem_configured);
  const dim3 grid(ceil_div(max_seqlen, kFlashRows), p.heads, p.batch);
  launch<attention_kernel_flash<D, TIn, TOut>>(grid, kFlashThreads, FlashShape<D>::kSmemBytes, stream,
                                               qkv, p.offsets, p.heads, p.scale * kLog2e, out);
  STEP_CUDA_CHECK_LAUNCH();
}

template <typename TIn, typename TOut>
void attention_launch(AttentionKernel kernel, const AttentionParams& p, int max_seqlen, const TIn* qkv, TOut* out,
                      cudaStream_t s) {
  const int D = p.head_dim;
  if (kernel == AttentionKernel::kFlash) {
    switch (D) {
      case 32: return attention_launch_flash<32>(p, max_seqlen, qkv, out, s);
      case 64: return attention_launch_flash<64>(p, max_seqlen, qkv, out, s);
      case 96: return attention_launch_flash<96>(p, max_seqlen, qkv, out, s);
      case 128: return attention_launch_flash<128>(p, max_seqlen, qkv, out, s);
    }
  }
  if (D <= 32) return attention_launch_naive<1>(p, max_seqlen, qkv, out, s);
  if (D <= 64) return attention_launch_naive<2>(p, max_seqlen, qkv, out, s);
  if (D <= 96) return attention_launch_naive<3>(p, max_seqlen, qkv, out, s);
  if (D <= 128) return attention_launch_naive<4>(p, max_seqlen, qkv, out, s);
  return attention_launch_naive<8>(p, max_seqlen, qkv, out, s);
}

bool flash_fits(int head_dim, bool aligned) {
  return aligned && (head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128);
}

}  // namespace

// ---- public entry -------------------------------------------------------------------------------

bool attention_supported(int head_dim) { return head_dim >= 1 && head_dim <= 256; }

AttentionKernel choose_attention_kernel(int head_dim, bool aligned) {
  return flash_fits(head_dim, aligned) ? AttentionKernel::kFlash : AttentionKernel::kNaive;
}

const char* attention_kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::kAuto: return "auto";
    case AttentionKernel::kNaive: return "naive";
    case AttentionKernel::kFlash: return "flash";
  }
  return "unknown";
}

void attention(const AttentionParams& p, const AttentionDeviceExtras& x, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.heads > 0, "cuda::attention: bad batch or head count");
  STEP_CHECK(attention_supported(p.head_dim), "cuda::attention: head dim must be 1..256");
  if (p.batch == 0) return;
  STEP_CHECK(p.offsets != nullptr, "cuda::attention: missing offsets");
  STEP_CHECK(x.max_seqlen >= 0, "cuda::attention: negative max_seqlen");
  if (x.max_seqlen == 0) return;  // every image is empty
  STEP_CHECK((p.qkv != nullptr) != (x.qkv_bf16 != nullptr), "cuda::attention: exactly one of qkv and qkv_bf16");
  STEP_CHECK((p.out != nullptr) != (x.out_bf16 != nullptr), "cuda::attention: exactly one of out and out_bf16");
  STEP_CHECK(p.batch <= 65535 && p.heads <= 65535, "cuda::attention: batch or heads past the grid limit");

  const bool aligned = (p.qkv ? is_aligned(p.qkv, 16) : is_aligned(x.qkv_bf16, 16)) &&
                       (p.out ? is_aligned(p.out, 8) : is_aligned(x.out_bf16, 4));
  const AttentionKernel kernel = x.kernel == AttentionKernel::kAuto ? choose_attention_kernel(p.head_dim, aligned) : x.kernel;
  STEP_CHECK(kernel == AttentionKernel::kNaive || flash_fits(p.head_dim, aligned),
             std::string("cuda::attention: kernel ") + attention_kernel_name(kernel) +
                 " cannot run this head dim or alignment");

  const cudaStream_t s = as_stream(stream);
  if (p.qkv && p.out) return attention_launch(kernel, p, x.max_seqlen, p.qkv, p.out, s);
  if (p.qkv) return attention_launch(kernel, p, x.max_seqlen, p.qkv, as_bf16(x.out_bf16), s);
  if (p.out) return attention_launch(kernel, p, x.max_seqlen, as_bf16(x.qkv_bf16), p.out, s);
  return attention_launch(kernel, p, x.max_seqlen, as_bf16(x.qkv_bf16), as_bf16(x.out_bf16), s);
}

}  // namespace step::cuda
