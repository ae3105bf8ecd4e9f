// gemm.cpp: c = epilogue(a * w^T + bias) in float32, the CPU backend's matrix product.
//
// Algorithm: a packed, cache-blocked GEMM in the style of GotoBLAS / BLIS.
//   - K is cut into blocks of at most kMaxKc. W (N, K) is packed into slivers of NR columns, each
//     stored k-major ([k][NR] contiguous), so the micro-kernel streams it linearly: once per call, or
//     once per model when the caller passes GemmParams::w_packed from pack_weights(), the same layout
//     built ahead (a model's weights never change; see the measurement at pack_weights).
//   - The output is cut into tiles (a range of rows x a range of columns) handed to parallel_for;
//     a tile packs its rows of A into slivers of MR rows ([k][MR] contiguous, zero-padded), one K
//     block at a time, then runs the micro-kernel over every MR x NR micro-tile of the tile, W
//     sliver by W sliver. The packed A block (about 200 KB) stays in L2 and is reused by every
//     sliver; a sliver is reused by every MR rows of the tile; the shared packed W comes from L3.
//   - The micro-kernel keeps its MR x NR accumulators in registers for a whole K block and writes
//     them out through the fused epilogue. Across K blocks c itself carries the partial sum:
//       first block:  c = residual + scale * bias + scale * acc   (residual only for kResidual)
//       later blocks: c = c + scale * acc
//       last block:   the activation (kGelu, kRelu6, kSigmoid) applied after the add
//     which equals the spec in ops.h because the residual epilogue is linear in acc. The residual
//     is read only in the first block, element by element before c is written, so it may alias c.
//   - Micro-kernels, chosen once at run time: AVX-512 (14 x 32), AVX2+FMA (6 x 16), and a portable
//     one in plain C++ (4 x 8) that the compiler vectorises for the baseline ISA. The file is built
//     without -march; the x86 kernels carry target attributes and are used only when
//     __builtin_cpu_supports says so. STEP_SEG_GEMM_KERNEL=generic|avx2|avx512 forces a lower one.
//   - GELU uses a rational approximation of erf (|error| < 4e-7), the same one in every kernel.
//   - Packing transposes 4 x 4 blocks in SSE registers; the kernels prefetch the c rows they write.
//   - gemm_packed.h opens the packing and the micro-kernels to callers that reuse packed operands
//     across calls (attention): pack_panel, and gemm_packed_block, one K block over operands packed
//     beforehand on the calling thread. The kernels read A with a step between k that is MR for
//     packed A and may be a row stride, so an A stored (K, M) needs no packing at all.
//
// Speed (2 threads, AMD Zen 4, ViT shapes M = 1024..4096): about 190 GFLOP/s with the AVX-512 or
// the AVX2 kernel, 85-90% of the measured FMA peak of 224 GFLOP/s; 55 GFLOP/s with the generic one.
//
// Layout: a (M, K) row stride lda; w (N, K) row-major (PyTorch Linear); c and residual (M, N) row
// stride ldc. Buffers for packing are thread_local and grow to the largest call seen; nothing else
// is shared between calls but a w_packed, which gemm only reads, so concurrent calls are safe.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "../core/errors.h"
#include "cpu_backend.h"
#include "gemm_kernels.h"
#include "gemm_packed.h"
#include "parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace step::cpu {
using namespace gemm_detail;

// Packs `rows` rows (of `width`, the rest zero) of src, columns [0, kc), as out[k * width + i].
// src: (rows, kc) float32, row stride ld; out: (kc, width) float32, contiguous.
// The 16 k wide steps keep the written part of out in L1; on x86 4 x 4 blocks are transposed in SSE
// registers (baseline x86-64), which makes packing about 6x faster than element by element.
void gemm_detail::pack_sliver(const float* src, int64_t ld, int rows, int width, int kc, float* out) {
  constexpr int kStep = 16;
  for (int k0 = 0; k0 < kc; k0 += kStep) {
    const int k1 = std::min(kc, k0 + kStep);
    int i = 0;
#if defined(__x86_64__)
    for (; i + 4 <= rows; i += 4) {
      const float* s = src + i * ld;
      int k = k0;
      for (; k + 4 <= k1; k += 4) {
        __m128 r0 = _mm_loadu_ps(s + k), r1 = _mm_loadu_ps(s + ld + k);
        __m128 r2 = _mm_loadu_ps(s + 2 * ld + k), r3 = _mm_loadu_ps(s + 3 * ld + k);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(out + k * width + i, r0);
        _mm_storeu_ps(out + (k + 1) * width + i, r1);
        _mm_storeu_ps(out + (k + 2) * width + i, r2);
        _mm_storeu_ps(out + (k + 3) * width + i, r3);
      }
      for (; k < k1; ++k)
        for (int r = 0; r < 4; ++r) out[k * width + i + r] = s[r * ld + k];
    }
#endif
    for (; i < rows; ++i) {
      const float* s = src + i * ld;
      for (int k = k0; k < k1; ++k) out[k * width + i] = s[k];
    }
    for (; i < width; ++i)
      for (int k = k0; k < k1; ++k) out[k * width + i] = 0.f;
  }
}

// Packs `vectors` vectors stored down the rows of src (element k of vector v at src[k * ld + v]) in
// slivers of `width`: row k of src already holds element k of every vector, so a sliver is a copy.
void gemm_detail::pack_depth_rows(const float* src, int64_t ld, int vectors, int width, int depth,
                                  float* out) {
  for (int v0 = 0; v0 < vectors; v0 += width, out += int64_t(width) * depth) {
    const int n = std::min(width, vectors - v0);
    const float* s = src + v0;
    for (int k = 0; k < depth; ++k, s += ld) {
      float* o = out + int64_t(k) * width;
      std::copy(s, s + n, o);
      std::fill(o + n, o + width, 0.f);
    }
  }
}

namespace {

// Below this many flops per thread a call runs on one thread: the pool's wake-up costs more.
constexpr double kMinFlopsPerThread = 2e6;

// Longest K block. 384 does ViT-S's K = 384 products in one pass (c written once) and measured the
// same as 256 on Zen 4 for K = 768 and 3072 (within the 3% run-to-run noise); 128 was 3-5% slower.
constexpr int kMaxKc = 384;
// Largest tile, in micro-tiles: 10 x MR rows keep the packed A block (10 * 14 * 384 floats with
// AVX-512, 215 KB) in a 1 MB L2 next to the tile's c rows, which are re-read once per K block.
// 6 and 16 rows measured within noise of 10; 64 columns instead of 32 made no difference.
constexpr int kTileRowUnits = 10;
constexpr int kTileColUnits = 32;
constexpr int kGenericMr = 4, kGenericNr = 8;
constexpr int kMaxNr = 32;  // the widest micro-tile, AVX-512's

void kernel_generic(int kc, const float* a, int64_t a_step, const float* b, const TileOut& o) {
  float acc[kGenericMr][kGenericNr] = {};
  for (int k = 0; k < kc; ++k, a += a_step, b += kGenericNr)
    for (int i = 0; i < kGenericMr; ++i)
      for (int j = 0; j < kGenericNr; ++j) acc[i][j] += a[i] * b[j];
  write_tile_scalar(&acc[0][0], kGenericNr, o);
}

#if defined(__x86_64__)

#define STEP_TARGET_AVX2 __attribute__((target("avx2,fma")))

STEP_TARGET_AVX512 void kernel_avx512(int kc, const float* a, int64_t a_step, const float* b,
                                      const TileOut& o) {
  __m512 acc[kAvx512Mr][2];
  start_tile_avx512(acc, o);
  for (int k = 0; k < kc; ++k, a += a_step, b += kAvx512Nr) {
    __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 14
    for (int i = 0; i < kAvx512Mr; ++i) {
      __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  store_tile_avx512(acc, o);
}

constexpr int kAvx2Mr = 6, kAvx2Nr = 16;

STEP_TARGET_AVX2 inline __m256 gelu_avx2(__m256 v) {
  __m256 x = _mm256_mul_ps(v, _mm256_set1_ps(kInvSqrt2));
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.f)), _mm256_set1_ps(4.f));
  __m256 x2 = _mm256_mul_ps(x, x), p = _mm256_set1_ps(kErfP[0]), q = _mm256_set1_ps(kErfQ[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfP[i]));
  for (int i = 1; i < 5; ++i) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfQ[i]));
  __m256 erf = _mm256_div_ps(_mm256_mul_ps(x, p), q);
  __m256 half_v = _mm256_mul_ps(v, _mm256_set1_ps(0.5f));
  return _mm256_fmadd_ps(half_v, erf, half_v);
}

STEP_TARGET_AVX2 void kernel_avx2(int kc, const float* a, int64_t a_step, const float* b,
                                  const TileOut& o) {
  __m256 acc[kAvx2Mr][2];
#pragma GCC unroll 6
  for (int i = 0; i < kAvx2Mr; ++i) {
    acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    if (i < o.rows) prefetch_row(o, i, kAvx2Nr);
  }
  for (int k = 0; k < kc; ++k, a += a_step, b += kAvx2Nr) {
    __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kAvx2Mr; ++i) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  if (o.cols < kAvx2Nr) {
    alignas(32) float tile[kAvx2Mr][kAvx2Nr];
#pragma GCC unroll 6
    for (int i = 0; i < kAvx2Mr; ++i) {
      _mm256_store_ps(tile[i], acc[i][0]);
      _mm256_store_ps(tile[i] + 8, acc[i][1]);
    }
    write_tile_scalar(&tile[0][0], kAvx2Nr, o);
    return;
  }
  __m256 s0 = _mm256_loadu_ps(o.scale), s1 = _mm256_loadu_ps(o.scale + 8);
  __m256 h0 = _mm256_loadu_ps(o.shift), h1 = _mm256_loadu_ps(o.shift + 8);
#pragma GCC unroll 6
  for (int i = 0; i < kAvx2Mr; ++i) {
    if (i >= o.rows) break;
    float* c = o.c + int64_t(i) * o.ldc;
    __m256 base0, base1;
    if (!o.first) {
      base0 = _mm256_loadu_ps(c);
      base1 = _mm256_loadu_ps(c + 8);
    } else if (o.residual) {
      const float* r = o.residual + int64_t(i) * o.ldc;
      base0 = _mm256_add_ps(h0, _mm256_loadu_ps(r));
      base1 = _mm256_add_ps(h1, _mm256_loadu_ps(r + 8));
    } else {
      base0 = h0;
      base1 = h1;
    }
    __m256 v0 = _mm256_fmadd_ps(s0, acc[i][0], base0), v1 = _mm256_fmadd_ps(s1, acc[i][1], base1);
    if (o.act == Epilogue::kGelu) {
      v0 = gelu_avx2(v0);
      v1 = gelu_avx2(v1);
    } else if (o.act == Epilogue::kRelu6) {
      const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
      v0 = _mm256_min_ps(_mm256_max_ps(v0, zero), six);
      v1 = _mm256_min_ps(_mm256_max_ps(v1, zero), six);
    }
    _mm256_storeu_ps(c, v0);
    _mm256_storeu_ps(c + 8, v1);
    if (o.act == Epilogue::kSigmoid)
      for (int j = 0; j < 16; ++j) c[j] = activate_scalar(o.act, c[j]);
  }
}

#endif  // __x86_64__

// The best kernel this CPU runs, lowered to the one STEP_SEG_GEMM_KERNEL names if it is set.
Kernel choose_kernel() {
  const Kernel generic{"generic", kGenericMr, kGenericNr, kernel_generic, 1, pack_sliver, pack_depth_rows};
  std::vector<Kernel> supported;  // best first
#if defined(__x86_64__)
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    supported.push_back({"avx512", kAvx512Mr, kAvx512Nr, kernel_avx512, 1, pack_sliver, pack_depth_rows});
  if (avx2) supported.push_back({"avx2", kAvx2Mr, kAvx2Nr, kernel_avx2, 1, pack_sliver, pack_depth_rows});
#endif
  supported.push_back(generic);
  const char* wanted = std::getenv("STEP_SEG_GEMM_KERNEL");
  if (!wanted) return supported.front();
  // Forcing can only lower the choice: a kernel the CPU lacks falls back to the best it has.
  const char* ladder[] = {"generic", "avx2", "avx512"};
  int wanted_level = -1;
  for (int l = 0; l < 3; ++l)
    if (std::strcmp(wanted, ladder[l]) == 0) wanted_level = l;
  if (wanted_level < 0) return supported.front();
  for (const Kernel& k : supported)
    for (int l = 0; l <= wanted_level; ++l)
      if (std::strcmp(k.name, ladder[l]) == 0) return k;
  return generic;
}

const Kernel& chosen_kernel() {
  static const Kernel kernel = choose_kernel();
  return kernel;
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// K cut into blocks of nearly equal size, at most kMaxKc deep, so that no block is a short,
// inefficient remainder. Block kb is [begin(kb), begin(kb + 1)). For kernels that take k in pairs
// every block but the last starts and ends on an even k, so a block is whole pairs (the last may
// end on an odd K: its last pair is padded with a zero).
struct KBlocks {
  int K, unit, count, max_depth;
  KBlocks(int k, int k_unit)
      : K(k), unit(k_unit), count(std::max(1, ceil_div(k, kMaxKc * k_unit))),
        max_depth(ceil_div(ceil_div(std::max(k, 1), count), k_unit) * k_unit) {}
  int begin(int kb) const {
    if (kb >= count) return K;
    return int(int64_t(K) * kb / count) / unit * unit;
  }
};

// Packs W (N, K) row-major for kernel `kern`, on `threads` threads.
// out: for each K block [k0, k1), at out + steps(k0) * n_pad, slivers of nr columns (n_pad = N
// rounded up to nr), sliver n0 / nr at + n0 * steps(k1 - k0), each (steps(k1 - k0), nr) step-major,
// zero-padded past N; steps() counts k (float32) or pairs of k (bfloat16), as the kernel takes them.
void pack_w(const Kernel& kern, const float* w, int N, int K, int threads, float* out) {
  const KBlocks blocks(K, kern.k_per_step);
  const int nr = kern.nr, units_n = ceil_div(N, nr), n_pad = units_n * nr;
  const int64_t items = int64_t(units_n) * blocks.count;
  parallel_for(items, threads > 1 ? ceil_div(int(items), threads) : items, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int kb = int(item / units_n), unit = int(item % units_n);
      int k0 = blocks.begin(kb), kc = blocks.begin(kb + 1) - k0, n0 = unit * nr;
      kern.pack(w + int64_t(n0) * K + k0, K, std::min(nr, N - n0), nr, kc,
                out + int64_t(depth_steps(kern, k0)) * n_pad + int64_t(n0) * depth_steps(kern, kc));
    }
  });
}

// What pack_weights() hands out (as GemmParams::w_packed): W packed by pack_w for one kernel, with
// the shape and the kernel it was packed for so that gemm() can check it.
struct PackedWeights {
  int N = 0, K = 0;
  const Kernel* kernel = nullptr;
  std::vector<float> storage;
  const float* data = nullptr;  // 64-byte aligned inside storage
};

// The kernel a call of the given precision runs: bf16 where this CPU has a bfloat16 kernel, else
// the float32 one.
const Kernel& kernel_for(Precision precision) {
  if (precision == Precision::kBf16)
    if (const Kernel* k = bf16_kernel()) return *k;
  return chosen_kernel();
}

}  // namespace

const Kernel& gemm_detail::fp32_kernel() { return chosen_kernel(); }

const char* gemm_kernel_name(Precision precision) {
  return precision == Precision::kBf16 && !bf16_kernel() ? "none" : kernel_for(precision).name;
}

// Packing once per model rather than once per call (ViT-S dense forward, 2 threads, AMD EPYC,
// base and packed binaries interleaved, 4 processes each, best of 8 runs, machine shared with another
// job): 512 px 371-412 ms against 402-455 ms, about 7% faster; 1024 px within noise (2770-3087
// against 2743-3091 ms, 3 processes each), where packing is under 1% of the forward.
std::shared_ptr<const void> pack_weights(const float* w, int N, int K, Precision precision) {
  STEP_CHECK(N >= 0 && K >= 0, "pack_weights: negative size");
  auto packed = std::make_shared<PackedWeights>();
  const Kernel& kern = kernel_for(precision);
  packed->N = N, packed->K = K, packed->kernel = &kern;
  float* out = scratch(packed->storage,
                       size_t(ceil_div(N, kern.nr)) * kern.nr * std::max(depth_steps(kern, K), 1));
  pack_w(kern, w, N, K, num_threads(), out);
  packed->data = out;
  return packed;
}

// ---- packed operands for callers that drive the blocking themselves (gemm_packed.h) -------------

MicroTile gemm_micro_tile(Precision precision) {
  const Kernel& k = kernel_for(precision);
  return {k.mr, k.nr, k.k_per_step};
}

size_t packed_panel_floats(int vectors, int depth, int width, Precision precision) {
  return size_t(ceil_div(vectors, width)) * width * depth_steps(kernel_for(precision), depth);
}

void pack_panel(const float* src, int vectors, int depth, int64_t ld, PanelLayout layout, int width,
                float* out, Precision precision) {
  const Kernel& kern = kernel_for(precision);
  if (layout == PanelLayout::kDepthRows) {
    kern.pack_depth_rows(src, ld, vectors, width, depth, out);
    return;
  }
  const int64_t sliver = int64_t(width) * depth_steps(kern, depth);
  for (int v0 = 0; v0 < vectors; v0 += width, out += sliver)
    kern.pack(src + int64_t(v0) * ld, ld, std::min(width, vectors - v0), width, depth, out);
}

void gemm_packed_block(int M, int N, int kc, const float* a, int64_t a_stride, int64_t a_step,
                       const float* w, int64_t w_stride, float* c, int64_t ldc, bool accumulate,
                       Precision precision) {
  const Kernel& kern = kernel_for(precision);
  const int mr = kern.mr, nr = kern.nr, steps = depth_steps(kern, kc);
  static const std::vector<float> ones(kMaxNr, 1.f), zeros(kMaxNr, 0.f);  // scale, shift
  // Row slivers outside: attention's blocks measured the same with the W slivers outside (T = 1025:
  // 16.8 against 16.9 ms, T = 4097: 261 against 262 ms, ViT-S, 1 thread).
  for (int m = 0; m < M; m += mr)
    for (int n = 0; n < N; n += nr) {
      TileOut o{c + int64_t(m) * ldc + n, nullptr, ones.data(), zeros.data(), int(ldc),
                std::min(mr, M - m), std::min(nr, N - n), !accumulate, Epilogue::kNone};
      kern.run(steps, a + int64_t(m / mr) * a_stride, a_step, w + int64_t(n / nr) * w_stride, o);
    }
}

void gemm(const GemmParams& p, Precision precision) {
  STEP_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, "gemm: negative size");
  if (p.M == 0 || p.N == 0) return;
  STEP_CHECK(p.lda >= p.K && p.ldc >= p.N, "gemm: row stride shorter than the row");
  const Kernel& kern = kernel_for(precision);
  const int mr = kern.mr, nr = kern.nr, M = p.M, N = p.N, K = p.K;
  const bool residual = p.epilogue == Epilogue::kResidual;
  auto steps = [&](int k) { return depth_steps(kern, k); };

  const KBlocks blocks(K, kern.k_per_step);
  const int k_blocks = blocks.count, kc_max = blocks.max_depth;
  auto k_begin = [&](int kb) { return blocks.begin(kb); };

  const int units_n = ceil_div(N, nr), n_pad = units_n * nr;
  thread_local std::vector<float> w_storage, column_storage;
  float* scale = scratch(column_storage, size_t(n_pad) * 2);
  float* shift = scale + n_pad;
  for (int n = 0; n < n_pad; ++n) {
    float s = n < N && residual && p.col_scale ? p.col_scale[n] : 1.f;
    scale[n] = s;
    shift[n] = n < N && p.bias ? s * p.bias[n] : 0.f;
  }

  const double flops = 2.0 * M * N * std::max(K, 1);
  const int threads = int(std::clamp(flops / kMinFlopsPerThread, 1.0, double(num_threads())));
  // Packed W (layout at pack_w): the caller's, packed once per model, or packed here.
  const float* packed_w;
  if (p.w_packed) {
    const auto& pw = *static_cast<const PackedWeights*>(p.w_packed);
    STEP_CHECK(pw.N == N && pw.K == K && pw.kernel == &kern,
               "gemm: w_packed was packed for another shape, kernel or precision");
    packed_w = pw.data;
  } else {
    float* out = scratch(w_storage, size_t(n_pad) * std::max(steps(K), 1));
    pack_w(kern, p.w, N, K, threads, out);
    packed_w = out;
  }

  // Tiles in units of micro-tiles; their count is rounded up to a multiple of the thread count so
  // that the last round of tiles keeps every thread busy.
  const int units_m = ceil_div(M, mr);
  int tiles_n = ceil_div(units_n, kTileColUnits);
  int tiles_m = ceil_div(units_m, kTileRowUnits);
  const int rounded = ceil_div(tiles_m * tiles_n, threads) * threads;
  tiles_m = std::min(units_m, ceil_div(rounded, tiles_n));
  if (tiles_m * tiles_n < threads) tiles_n = std::min(units_n, ceil_div(threads, tiles_m));

  // The activation runs on the last K block only; kResidual has none (it is linear in acc).
  const Epilogue act = p.epilogue == Epilogue::kResidual ? Epilogue::kNone : p.epilogue;
  const int64_t tiles = int64_t(tiles_m) * tiles_n;
  parallel_for(tiles, threads > 1 ? 1 : tiles, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> a_storage;
    const int max_tile_units = ceil_div(units_m, tiles_m);
    float* packed_a = scratch(a_storage, size_t(max_tile_units) * mr * steps(kc_max));
    for (int64_t t = begin; t < end; ++t) {
      int tm = int(t / tiles_n), tn = int(t % tiles_n);
      int m0 = int(int64_t(units_m) * tm / tiles_m) * mr;
      int m1 = std::min(M, int(int64_t(units_m) * (tm + 1) / tiles_m) * mr);
      int n0 = int(int64_t(units_n) * tn / tiles_n) * nr;
      int n1 = std::min(N, int(int64_t(units_n) * (tn + 1) / tiles_n) * nr);
      for (int kb = 0; kb < k_blocks; ++kb) {
        int k0 = k_begin(kb), kc = k_begin(kb + 1) - k0, sc = steps(kc);
        for (int m = m0; m < m1; m += mr)
          kern.pack(p.a + int64_t(m) * p.lda + k0, p.lda, std::min(mr, m1 - m), mr, kc,
                    packed_a + int64_t(m - m0) * sc);
        for (int n = n0; n < n1; n += nr) {
          const float* b = packed_w + int64_t(steps(k0)) * n_pad + int64_t(n) * sc;
          for (int m = m0; m < m1; m += mr) {
            int64_t at = int64_t(m) * p.ldc + n;
            TileOut o{p.c + at, residual && p.residual ? p.residual + at : nullptr, scale + n,
                      shift + n, p.ldc, std::min(mr, m1 - m), std::min(nr, n1 - n), kb == 0,
                      kb == k_blocks - 1 ? act : Epilogue::kNone};
            kern.run(sc, packed_a + int64_t(m - m0) * sc, mr, b, o);
          }
        }
      }
    }
  });
}

}  // namespace step::cpu
