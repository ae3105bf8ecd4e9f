// gemm_kernels.h: what gemm.cpp (the driver and the float32 micro-kernels) shares with gemm_bf16.cpp
// (the bfloat16 micro-kernels and their packing): the micro-tile epilogue, the kernel table entry and
// the AVX-512 store of a 14 x 32 tile. Internal to native/cpu.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/ops.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace step::cpu::gemm_detail {

constexpr float kInvSqrt2 = 0.70710678118654752f;

// erf(x) = x * P(x^2) / Q(x^2) on [-4, 4], saturated outside (erf(4) rounds to 1 in float).
// Coefficients of Eigen's generic_fast_erf_float.
constexpr float kErfP[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                            -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                            -1.60960333262415e-02f};
constexpr float kErfQ[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                            -7.37332916720468e-03f, -1.42647390514189e-02f};

inline float gelu_scalar(float v) {
  float x = std::min(std::max(v * kInvSqrt2, -4.f), 4.f), x2 = x * x;
  float p = kErfP[0], q = kErfQ[0];
  for (int i = 1; i < 7; ++i) p = p * x2 + kErfP[i];
  for (int i = 1; i < 5; ++i) q = q * x2 + kErfQ[i];
  return 0.5f * v * (1.f + x * p / q);
}

// Where and how one micro-tile is written.
struct TileOut {
  float* c;                 // top-left of the micro-tile in c, row stride ldc
  const float* residual;    // same position in residual, or null; read only when first is set
  const float* scale;       // (NR) multiplier of acc per column: col_scale, or 1
  const float* shift;       // (NR) scale * bias per column, or 0
  int ldc;
  int rows, cols;           // valid part of the MR x NR micro-tile
  bool first;               // first K block: start from residual + shift instead of c
  Epilogue act;             // kGelu, kRelu6 or kSigmoid on the last K block, else kNone
};

inline float activate_scalar(Epilogue act, float v) {
  switch (act) {
    case Epilogue::kGelu: return gelu_scalar(v);
    case Epilogue::kRelu6: return std::min(std::max(v, 0.f), 6.f);
    case Epilogue::kSigmoid: return 1.f / (1.f + std::exp(-v));
    default: return v;
  }
}

// Writes a micro-tile held in memory (acc[i * acc_ld + j]); used by the portable kernel and by the
// SIMD kernels for tiles cut by the right edge of c.
inline void write_tile_scalar(const float* acc, int acc_ld, const TileOut& o) {
  for (int i = 0; i < o.rows; ++i) {
    float* c = o.c + int64_t(i) * o.ldc;
    const float* r = o.residual ? o.residual + int64_t(i) * o.ldc : nullptr;
    for (int j = 0; j < o.cols; ++j) {
      float base = o.first ? o.shift[j] + (r ? r[j] : 0.f) : c[j];
      float v = o.scale[j] * acc[i * acc_ld + j] + base;
      c[j] = activate_scalar(o.act, v);
    }
  }
}

// a: kc steps of MR values, a_step floats apart (MR when packed); b: kc steps of NR values, packed.
// A step is one k for the float32 kernels and a pair of k (two bfloat16 in the bits of one float)
// for the bfloat16 ones.
using MicroKernel = void (*)(int kc, const float* a, int64_t a_step, const float* b,
                             const TileOut& o);
// Packs `rows` vectors (of `width`, the rest zero) of src, elements [0, kc), into kc steps of `width`
// values (layout at pack_sliver in gemm.cpp): src (rows, kc) float32, row stride ld.
using PackFn = void (*)(const float* src, int64_t ld, int rows, int width, int kc, float* out);
// The same for vectors stored down the rows (vector v, element k at src[k * ld + v]).
using PackDepthRowsFn = void (*)(const float* src, int64_t ld, int vectors, int width, int depth,
                                 float* out);

struct Kernel {
  const char* name;
  int mr, nr;
  MicroKernel run;
  int k_per_step;  // 1: float32; 2: bfloat16 pairs
  PackFn pack;
  PackDepthRowsFn pack_depth_rows;
};

inline int depth_steps(const Kernel& k, int depth) { return (depth + k.k_per_step - 1) / k.k_per_step; }

// Float32 kernels (gemm.cpp): the best this CPU runs, lowered to STEP_SEG_GEMM_KERNEL's choice.
const Kernel& fp32_kernel();
// The bfloat16 kernel (gemm_bf16.cpp), or null where the CPU has none (then bf16 runs as float32).
const Kernel* bf16_kernel();
void pack_sliver(const float* src, int64_t ld, int rows, int width, int kc, float* out);
void pack_depth_rows(const float* src, int64_t ld, int vectors, int width, int depth, float* out);

// A thread's growable scratch, aligned to a cache line so that SIMD loads of packed panels never
// straddle two lines.
inline float* scratch(std::vector<float>& storage, size_t floats) {
  constexpr size_t kAlignFloats = 16;
  if (storage.size() < floats + kAlignFloats) storage.resize(floats + kAlignFloats);
  auto addr = reinterpret_cast<uintptr_t>(storage.data());
  return storage.data() + ((64 - addr % 64) % 64) / sizeof(float);
}



#if defined(__x86_64__)

#define STEP_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))

// Starts fetching the c (and residual) lines of row i of a micro-tile `width` floats wide while the
// K loop runs, so that the epilogue stores into lines already in L1 rather than stall (3% faster).
inline void prefetch_row(const TileOut& o, int i, int width) {
  const float* c = o.c + int64_t(i) * o.ldc;
  const bool read_residual = o.first && o.residual && o.residual != o.c;
  const float* r = read_residual ? o.residual + int64_t(i) * o.ldc : nullptr;
  for (int j = 0; j < width; j += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(c + j), _MM_HINT_T0);
    if (r) _mm_prefetch(reinterpret_cast<const char*>(r + j), _MM_HINT_T0);
  }
}

constexpr int kAvx512Mr = 14, kAvx512Nr = 32;

STEP_TARGET_AVX512 inline __m512 gelu_avx512(__m512 v) {
  // The zero-masked min/max (all lanes kept) are plain vminps/vmaxps; the unmasked intrinsics start
  // from _mm512_undefined_ps, which makes g++ 12 warn -Wmaybe-uninitialized.
  constexpr __mmask16 kAll = 0xffff;
  __m512 x = _mm512_mul_ps(v, _mm512_set1_ps(kInvSqrt2));
  x = _mm512_maskz_max_ps(kAll, x, _mm512_set1_ps(-4.f));
  x = _mm512_maskz_min_ps(kAll, x, _mm512_set1_ps(4.f));
  __m512 x2 = _mm512_mul_ps(x, x), p = _mm512_set1_ps(kErfP[0]), q = _mm512_set1_ps(kErfQ[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfP[i]));
  for (int i = 1; i < 5; ++i) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kErfQ[i]));
  __m512 erf = _mm512_div_ps(_mm512_mul_ps(x, p), q);
  __m512 half_v = _mm512_mul_ps(v, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(half_v, erf, half_v);
}

// Zeroes a 14 x 32 tile of accumulators and starts fetching the c rows it will write.
STEP_TARGET_AVX512 __attribute__((always_inline)) inline void start_tile_avx512(__m512 (&acc)[kAvx512Mr][2],
                                                                              const TileOut& o) {
#pragma GCC unroll 14
  for (int i = 0; i < kAvx512Mr; ++i) {
    acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    if (i < o.rows) prefetch_row(o, i, kAvx512Nr);
  }
}

// Writes a 14 x 32 tile of accumulators through the epilogue (full width, o.rows rows).
STEP_TARGET_AVX512 __attribute__((always_inline)) inline void store_tile_avx512(const __m512 (&acc)[kAvx512Mr][2], const TileOut& o) {
  if (o.cols < kAvx512Nr) {
    alignas(64) float tile[kAvx512Mr][kAvx512Nr];
#pragma GCC unroll 14
    for (int i = 0; i < kAvx512Mr; ++i) {
      _mm512_store_ps(tile[i], acc[i][0]);
      _mm512_store_ps(tile[i] + 16, acc[i][1]);
    }
    write_tile_scalar(&tile[0][0], kAvx512Nr, o);
    return;
  }
  __m512 s0 = _mm512_loadu_ps(o.scale), s1 = _mm512_loadu_ps(o.scale + 16);
  __m512 h0 = _mm512_loadu_ps(o.shift), h1 = _mm512_loadu_ps(o.shift + 16);
#pragma GCC unroll 14
  for (int i = 0; i < kAvx512Mr; ++i) {
    if (i >= o.rows) break;
    float* c = o.c + int64_t(i) * o.ldc;
    __m512 base0, base1;
    if (!o.first) {
      base0 = _mm512_loadu_ps(c);
      base1 = _mm512_loadu_ps(c + 16);
    } else if (o.residual) {
      const float* r = o.residual + int64_t(i) * o.ldc;
      base0 = _mm512_add_ps(h0, _mm512_loadu_ps(r));
      base1 = _mm512_add_ps(h1, _mm512_loadu_ps(r + 16));
    } else {
      base0 = h0;
      base1 = h1;
    }
    __m512 v0 = _mm512_fmadd_ps(s0, acc[i][0], base0), v1 = _mm512_fmadd_ps(s1, acc[i][1], base1);
    if (o.act == Epilogue::kGelu) {
      v0 = gelu_avx512(v0);
      v1 = gelu_avx512(v1);
    } else if (o.act == Epilogue::kRelu6) {
      // masked forms: GCC 12 warns about the undefined source register of the unmasked ones
      const __m512 zero = _mm512_set1_ps(0.f), six = _mm512_set1_ps(6.f);
      v0 = _mm512_mask_min_ps(v0, 0xffff, _mm512_mask_max_ps(v0, 0xffff, v0, zero), six);
      v1 = _mm512_mask_min_ps(v1, 0xffff, _mm512_mask_max_ps(v1, 0xffff, v1, zero), six);
    }
    _mm512_storeu_ps(c, v0);
    _mm512_storeu_ps(c + 16, v1);
    if (o.act == Epilogue::kSigmoid)  // only the small policy heads use it: scalar is enough
      for (int j = 0; j < 32; ++j) c[j] = activate_scalar(o.act, c[j]);
  }
}

#endif  // __x86_64__

}  // namespace step::cpu::gemm_detail
