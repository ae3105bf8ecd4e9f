// gemm.cu: c = epilogue(a * w^T + bias) on the GPU, bf16 operands, float32 accumulation, float32 or
// bf16 output; the CUDA side of native/cpu/gemm.cpp (same GemmParams, same epilogues).
//
// Two variants, chosen by choose_gemm_kernel():
//   gemm_kernel_simple  float32 shared-memory tiles: a 64 x 64 block tile, 16-deep K slices, 256
//                       threads of 4 x 4 outputs each. Any M, N, K, stride and alignment. The
//                       reference the mma kernel is tested against, and the fallback.
//   gemm_kernel_mma     bf16 tensor cores: BM x BN x 32 block tiles, warps of (BM / warps_m) x
//                       (BN / warps_n) outputs as m16n8k16 fragments loaded with ldmatrix, and a
//                       kStages-deep cp.async pipeline (tile kt + kStages - 1 is in flight while tile kt
//                       is multiplied; kStages = 2 is plain double buffering). Shared rows are padded
//                       to 40 elements (80 bytes), which makes ldmatrix conflict-free (mma.cuh).
//                       Needs K % 16 == 0 (whole 16-byte chunks, zero-filled past K), N % 8 == 0
//                       (column pairs of the epilogue never straddle N) and aligned operands.
// The epilogue is fused: bias, then GELU (erf), ReLU6, sigmoid or residual + col_scale * (.), written
// straight from the accumulators. The residual is read element by element by the thread that writes
// the same element, so it may alias c.
// Rows: M may live on the device (m_device) with GemmParams::M as the host bound that sizes the grid;
// every block reads the real M first and blocks wholly past it exit, so one captured graph serves
// every token count up to the bound.
// Layout: a (M, K) row stride lda; w (N, K) row-major (PyTorch Linear, i.e. the "col" B operand of
// mma.sync); c and residual (M, N) row stride ldc.
// Tile choices are not measured yet (no GPU where this was written): they follow the usual Ampere
// shapes (CUTLASS's 128 x 128 x 32, 3 stages), with smaller tiles when the big ones leave SMs idle.

#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"
#include "mma.cuh"

namespace step::cuda {
namespace {

template <typename TOut>
struct GemmArgs {
  int M_bound, N, K;
  const __nv_bfloat16* a;  // (M, K) row stride lda
  int lda;
  const __nv_bfloat16* w;  // (N, K)
  const float* bias;       // (N) or null
  const float* col_scale;  // (N) or null (kResidual only)
  Epilogue epilogue;
  const float* residual;   // (M, N) row stride ldc, or null; may alias c
  TOut* c;                 // (M, N) row stride ldc
  int ldc;
  const int32_t* m_device;  // (1) or null
};

__device__ __forceinline__ int gemm_rows(const int32_t* m_device, int M_bound) {
  return m_device ? max(0, min(*m_device, M_bound)) : M_bound;
}

__device__ __forceinline__ float gemm_epilogue(Epilogue e, float acc, float bias, float scale, float residual) {
  const float v = acc + bias;
  switch (e) {
    case Epilogue::kGelu: return gelu_erf(v);
    case Epilogue::kResidual: return residual + scale * v;
    case Epilogue::kRelu6: return fminf(fmaxf(v, 0.f), 6.f);
    case Epilogue::kSigmoid: return 1.f / (1.f + expf(-v));
    default: return v;
  }
}

// Writes columns col and col + 1 of one row (col even, col + 1 < N, pair-aligned pointers).
template <typename TOut>
__device__ __forceinline__ void gemm_store_pair(const GemmArgs<TOut>& g, int row, int col, float v0, float v1) {
  const float b0 = g.bias ? g.bias[col] : 0.f, b1 = g.bias ? g.bias[col + 1] : 0.f;
  const int64_t at = int64_t(row) * g.ldc + col;
  float s0 = 1.f, s1 = 1.f, r0 = 0.f, r1 = 0.f;
  if (g.epilogue == Epilogue::kResidual) {
    if (g.col_scale) s0 = g.col_scale[col], s1 = g.col_scale[col + 1];
    if (g.residual) {
      const float2 r = *reinterpret_cast<const float2*>(g.residual + at);
      r0 = r.x, r1 = r.y;
    }
  }
  store_pair(g.c + at, gemm_epilogue(g.epilogue, v0, b0, s0, r0), gemm_epilogue(g.epilogue, v1, b1, s1, r1));
}

template <typename TOut>
__device__ __forceinline__ void gemm_store_one(const GemmArgs<TOut>& g, int row, int col, float v) {
  const int64_t at = int64_t(row) * g.ldc + col;
  const bool residual = g.epilogue == Epilogue::kResidual;
  const float s = residual && g.col_scale ? g.col_scale[col] : 1.f;
  const float r = residual && g.residual ? g.residual[at] : 0.f;
  g.c[at] = from_float<TOut>(gemm_epilogue(g.epilogue, v, g.bias ? g.bias[col] : 0.f, s, r));
}

// ---- simple -------------------------------------------------------------------------------------

constexpr int kSimpleTile = 64, kSimpleDepth = 16, kSimpleThreads = 256;

// Block (blockIdx.x, blockIdx.y) computes rows 64 x, columns 64 y; thread (tx, ty) of the 16 x 16
// grid owns rows ty + 16 i and columns tx + 16 j (i, j < 4): strided, so that the shared reads of a
// warp are broadcasts (as) or consecutive (ws) and the stores coalesce.
template <typename TOut>
__global__ void __launch_bounds__(kSimpleThreads) gemm_kernel_simple(GemmArgs<TOut> g) {
  __shared__ float as[kSimpleDepth][kSimpleTile + 1];  // a tile transposed, [k][m]; +1: no conflicts on store
  __shared__ float ws[kSimpleDepth][kSimpleTile + 1];  // w tile transposed, [k][n]
  const int M = gemm_rows(g.m_device, g.M_bound);
  const int m0 = blockIdx.x * kSimpleTile, n0 = blockIdx.y * kSimpleTile;
  if (m0 >= M) return;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < g.K; k0 += kSimpleDepth) {
#pragma unroll
    for (int step = 0; step < kSimpleTile * kSimpleDepth / kSimpleThreads; ++step) {
      const int i = threadIdx.x + step * kSimpleThreads;
      const int r = i / kSimpleDepth, k = i % kSimpleDepth, gk = k0 + k;
      const int gm = m0 + r, gn = n0 + r;
      as[k][r] = gm < M && gk < g.K ? to_float(g.a[int64_t(gm) * g.lda + gk]) : 0.f;
      ws[k][r] = gn < g.N && gk < g.K ? to_float(g.w[int64_t(gn) * g.K + gk]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSimpleDepth; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = as[k][ty + 16 * i], b[i] = ws[k][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = m0 + ty + 16 * i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + tx + 16 * j;
      if (col < g.N) gemm_store_one(g, row, col, acc[i][j]);
    }
  }
}

// ---- mma ----------------------------------------------------------------------------------------

template <int kBM_, int kBN_, int kWarpsM_, int kWarpsN_, int kStages_>
struct MmaTile {
  static constexpr int kBM = kBM_, kBN = kBN_, kBK = 32, kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kStages = kStages_;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kWarpM = kBM / kWarpsM, kWarpN = kBN / kWarpsN;  // outputs of one warp
  static constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 8;     // m16 x n8 fragments per warp
  static constexpr int kLds = kBK + 8;                                  // shared row stride, elements
  static constexpr int kStageElems = (kBM + kBN) * kLds;                // a tile then w tile
  static constexpr int kSmemBytes = kStages * kStageElems * int(sizeof(__nv_bfloat16));
  static_assert(kBM % (16 * kWarpsM) == 0 && kBN % (16 * kWarpsN) == 0, "warp tile of whole n16 pairs");
  static_assert((kBM * kBK / 8) % kThreads == 0 && (kBN * kBK / 8) % kThreads == 0, "whole chunks per thread");
  static_assert(kStages >= 2, "at least double buffering");
};
// Tuning untested: 128 x 128 with 8 warps of 64 x 32 is CUTLASS's default Ampere bf16 tile; the two
// smaller ones exist for products too small to give every SM two big tiles (ViT-S at 512 x 512:
// M = 1025, N = 384 is only 27 big tiles for 132 SMs).
using MmaLarge = MmaTile<128, 128, 2, 4, 3>;   // 256 threads, 60 KB shared
using MmaMedium = MmaTile<128, 64, 2, 2, 3>;   // 128 threads, 45 KB shared
using MmaSmall = MmaTile<64, 64, 2, 2, 4>;     // 128 threads, 40 KB shared

// Issues the cp.async of the a and w tiles at (m0, n0, k0) into one stage: 16-byte chunks, rows past
// M or N and chunks past K zero-filled (K % 16 == 0, so a chunk is either whole or wholly past K).
template <class Cfg, typename TOut>
__device__ __forceinline__ void gemm_load_stage(__nv_bfloat16* stage, const GemmArgs<TOut>& g, int M, int m0, int n0,
                                                int k0) {
  constexpr int kChunksPerRow = Cfg::kBK / 8;
  __nv_bfloat16* as = stage;
  __nv_bfloat16* ws = stage + Cfg::kBM * Cfg::kLds;
#pragma unroll
  for (int step = 0; step < Cfg::kBM * kChunksPerRow / Cfg::kThreads; ++step) {
    const int c = threadIdx.x + step * Cfg::kThreads;
    const int r = c / kChunksPerRow, kc = (c % kChunksPerRow) * 8;
    const int gm = m0 + r, gk = k0 + kc;
    const bool ok = gm < M && gk < g.K;
    cp_async_16(as + r * Cfg::kLds + kc, ok ? g.a + int64_t(gm) * g.lda + gk : g.a, ok);
  }
#pragma unroll
  for (int step = 0; step < Cfg::kBN * kChunksPerRow / Cfg::kThreads; ++step) {
    const int c = threadIdx.x + step * Cfg::kThreads;
    const int r = c / kChunksPerRow, kc = (c % kChunksPerRow) * 8;
    const int gn = n0 + r, gk = k0 + kc;
    const bool ok = gn < g.N && gk < g.K;
    cp_async_16(ws + r * Cfg::kLds + kc, ok ? g.w + int64_t(gn) * g.K + gk : g.w, ok);
  }
}

// Block (blockIdx.x, blockIdx.y) computes rows kBM x, columns kBN y. Warp w owns the warp tile
// (w / kWarpsN, w % kWarpsN).
template <class Cfg, typename TOut>
__global__ void __launch_bounds__(Cfg::kThreads) gemm_kernel_mma(GemmArgs<TOut> g) {
  STEP_DYNAMIC_SMEM(unsigned char, gemm_smem);
  __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(gemm_smem);  // kStages x (a tile, w tile)
  const int M = gemm_rows(g.m_device, g.M_bound);
  const int m0 = blockIdx.x * Cfg::kBM, n0 = blockIdx.y * Cfg::kBN;
  if (m0 >= M) return;  // whole block, before any barrier
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / Cfg::kWarpsN) * Cfg::kWarpM, wn = (warp % Cfg::kWarpsN) * Cfg::kWarpN;

  float acc[Cfg::kFragsM][Cfg::kFragsN][4];
#pragma unroll
  for (int i = 0; i < Cfg::kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kFragsN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Pipeline: one commit group per K tile (empty groups past the end keep the count uniform), so
  // at iteration kt, "at most kStages - 2 groups pending" means tile kt has landed.
  const int k_tiles = ceil_div(g.K, Cfg::kBK);
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < k_tiles) gemm_load_stage<Cfg>(smem + s * Cfg::kStageElems, g, M, m0, n0, s * Cfg::kBK);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<Cfg::kStages - 2>();
    // Makes tile kt visible to all threads, and guarantees every warp has finished tile kt - 1,
    // whose stage the next load overwrites.
    __syncthreads();
    const int next = kt + Cfg::kStages - 1;
    if (next < k_tiles) gemm_load_stage<Cfg>(smem + (next % Cfg::kStages) * Cfg::kStageElems, g, M, m0, n0, next * Cfg::kBK);
    cp_async_commit();

    const __nv_bfloat16* as = smem + (kt % Cfg::kStages) * Cfg::kStageElems;
    const __nv_bfloat16* ws = as + Cfg::kBM * Cfg::kLds;
#pragma unroll
    for (int kk = 0; kk < Cfg::kBK; kk += 16) {
      uint32_t af[Cfg::kFragsM][4], bf[Cfg::kFragsN][2];
#pragma unroll
      for (int i = 0; i < Cfg::kFragsM; ++i)
        ldmatrix_x4(af[i], as + (wm + i * 16 + lane % 16) * Cfg::kLds + kk + (lane / 16) * 8);
#pragma unroll
      for (int j = 0; j < Cfg::kFragsN; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, ws + (wn + j * 8 + (lane & 7) + (lane >> 4) * 8) * Cfg::kLds + kk + ((lane >> 3) & 1) * 8);
        bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < Cfg::kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::kFragsN; ++j) mma_bf16_16816(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups remain; leave nothing in flight

  // Epilogue from the accumulator layout: c0, c1 at (g, 2t), c2, c3 at (g + 8, 2t).
  const int gr = lane / 4, tc = 2 * (lane % 4);
#pragma unroll
  for (int j = 0; j < Cfg::kFragsN; ++j) {
    const int col = n0 + wn + j * 8 + tc;
    if (col >= g.N) continue;
#pragma unroll
    for (int i = 0; i < Cfg::kFragsM; ++i) {
      const int row = m0 + wm + i * 16 + gr;
      if (row < M) gemm_store_pair(g, row, col, acc[i][j][0], acc[i][j][1]);
      if (row + 8 < M) gemm_store_pair(g, row + 8, col, acc[i][j][2], acc[i][j][3]);
    }
  }
}

// ---- launchers ----------------------------------------------------------------------------------

template <typename TOut>
void gemm_launch_simple(const GemmArgs<TOut>& g, cudaStream_t stream) {
  NvtxRange range("gemm");
  const dim3 grid(ceil_div(g.M_bound, kSimpleTile), ceil_div(g.N, kSimpleTile));
  launch<gemm_kernel_simple<TOut>>(grid, kSimpleThreads, 0, stream, g);
  STEP_CUDA_CHECK_LAUNCH();
}

template <class Cfg, typename TOut>
void gemm_launch_mma(const GemmArgs<TOut>& g, cudaStream_t stream) {
  NvtxRange range("gemm");
  static std::atomic<uint64_t> smem_configured{0};
  ensure_dynamic_smem(gemm_kernel_mma<Cfg, TOut>, Cfg::kSmemBytes, smem_configured);
  const dim3 grid(ceil_div(g.M_bound, Cfg::kBM), ceil_div(g.N, Cfg::kBN));
  launch<gemm_kernel_mma<Cfg, TOut>>(grid, Cfg::kThreads, Cfg::kSmemBytes, stream, g);
  STEP_CUDA_CHECK_LAUNCH();
}

template <typename TOut>
void gemm_launch(GemmKernel kernel, const GemmArgs<TOut>& g, cudaStream_t stream) {
  switch (kernel) {
    case GemmKernel::kMma128x128: return gemm_launch_mma<MmaLarge>(g, stream);
    case GemmKernel::kMma128x64: return gemm_launch_mma<MmaMedium>(g, stream);
    case GemmKernel::kMma64x64: return gemm_launch_mma<MmaSmall>(g, stream);
    default: return gemm_launch_simple(g, stream);
  }
}

bool mma_fits(int N, int K, bool aligned) { return aligned && K % 16 == 0 && N % 8 == 0; }

}  // namespace

// ---- public entry -------------------------------------------------------------------------------

GemmKernel choose_gemm_kernel(int M_bound, int N, int K, bool operands_aligned) {
  if (!mma_fits(N, K, operands_aligned)) return GemmKernel::kSimple;
  // The biggest tile that still gives an H100 / H200 (132 SMs) two blocks per SM; else the smallest.
  constexpr int64_t kEnoughBlocks = 2 * 132;
  auto blocks = [&](int bm, int bn) { return int64_t(ceil_div(M_bound, bm)) * ceil_div(N, bn); };
  if (blocks(MmaLarge::kBM, MmaLarge::kBN) >= kEnoughBlocks) return GemmKernel::kMma128x128;
  if (blocks(MmaMedium::kBM, MmaMedium::kBN) >= kEnoughBlocks) return GemmKernel::kMma128x64;
  return GemmKernel::kMma64x64;
}

const char* gemm_kernel_name(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kAuto: return "auto";
    case GemmKernel::kSimple: return "simple";
    case GemmKernel::kMma128x128: return "mma128x128";
    case GemmKernel::kMma128x64: return "mma128x64";
    case GemmKernel::kMma64x64: return "mma64x64";
  }
  return "unknown";
}

void gemm(const GemmParams& p, const GemmDeviceExtras& x, void* stream) {
  STEP_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "cuda::gemm: negative size");
  if (p.M == 0 || p.N == 0) return;
  STEP_CHECK(p.a == nullptr && p.w == nullptr,
             "cuda::gemm: operands are bf16, passed as GemmDeviceExtras::a_bf16 and w_bf16 (GemmParams::a, w must be null)");
  STEP_CHECK(p.K == 0 || (x.a_bf16 && x.w_bf16), "cuda::gemm: missing a_bf16 or w_bf16");
  STEP_CHECK((p.c != nullptr) != (x.c_bf16 != nullptr), "cuda::gemm: exactly one of c and c_bf16 must be set");
  STEP_CHECK(p.lda >= p.K && p.ldc >= p.N, "cuda::gemm: row stride shorter than the row");
  STEP_CHECK(p.epilogue == Epilogue::kNone || p.epilogue == Epilogue::kGelu || p.epilogue == Epilogue::kResidual ||
                 p.epilogue == Epilogue::kRelu6 || p.epilogue == Epilogue::kSigmoid,
             "cuda::gemm: epilogue not implemented");
  STEP_CHECK(p.residual == nullptr || x.c_bf16 == nullptr || static_cast<const void*>(p.residual) != x.c_bf16,
             "cuda::gemm: a float32 residual cannot alias a bf16 output");

  const bool aligned = is_aligned(x.a_bf16, 16) && is_aligned(x.w_bf16, 16) && p.lda % 8 == 0 && p.ldc % 2 == 0 &&
                       (p.c ? is_aligned(p.c, 8) : is_aligned(x.c_bf16, 4)) &&
                       (p.residual == nullptr || is_aligned(p.residual, 8));
  GemmKernel kernel = x.kernel == GemmKernel::kAuto ? choose_gemm_kernel(p.M, p.N, p.K, aligned) : x.kernel;
  STEP_CHECK(kernel == GemmKernel::kSimple || mma_fits(p.N, p.K, aligned),
             std::string("cuda::gemm: kernel ") + gemm_kernel_name(kernel) + " cannot run this shape or alignment");

  const cudaStream_t s = as_stream(stream);
  const bool residual = p.epilogue == Epilogue::kResidual;
  if (p.c) {
    const GemmArgs<float> g{p.M, p.N, p.K, as_bf16(x.a_bf16), p.lda, as_bf16(x.w_bf16), p.bias,
                            residual ? p.col_scale : nullptr, p.epilogue, residual ? p.residual : nullptr,
                            p.c, p.ldc, x.m_device};
    gemm_launch(kernel, g, s);
  } else {
    const GemmArgs<__nv_bfloat16> g{p.M, p.N, p.K, as_bf16(x.a_bf16), p.lda, as_bf16(x.w_bf16), p.bias,
                                    residual ? p.col_scale : nullptr, p.epilogue, residual ? p.residual : nullptr,
                                    as_bf16(x.c_bf16), p.ldc, x.m_device};
    gemm_launch(kernel, g, s);
  }
}

}  // namespace step::cuda
