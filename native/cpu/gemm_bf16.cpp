// gemm_bf16.cpp: the bfloat16 micro-kernels of gemm.cpp's driver and their packing: operands rounded
// to bfloat16 (nearest even), products accumulated in float32, the numerics of the CUDA backend's
// mma.sync bf16 GEMMs. gemm.cpp's blocking, tiling, threading and epilogues serve both precisions;
// only the depth unit differs: a step of these kernels is a pair of k, two bfloat16 held in the
// 32 bits of one float of the packed panels (k even in the low half, an odd depth's last pair padded
// with zero), which is the operand format of AVX512_BF16's vdpbf16ps:
//   acc[j] += a[2j + 1] * b[2j + 1], then acc[j] += a[2j] * b[2j]  (float32, nearest even)
// for the 16 float lanes j of a register holding 32 bfloat16.
//
// Kernels, chosen once at run time (STEP_SEG_BF16_KERNEL=avx512bf16|generic|none overrides):
//   - "avx512bf16": 14 x 32 like the float32 AVX-512 kernel, with vdpbf16ps doing two k per
//     instruction, so twice the float32 kernel's work per instruction (measured on one Zen 4 core in
//     a register-only loop: 390-485 against 230-240 GFLOP/s). Where the CPU has AVX512_BF16.
//   - "bf16-generic": the same arithmetic in plain C++ (4 x 8), the rounding of vcvtneps2bf16 and
//     the two float32 adds of vdpbf16ps done one by one: bit for bit the AVX512_BF16 kernel's result
//     where no value is subnormal (the hardware flushes subnormals; this twin does in the rounding
//     only). Never chosen by itself: the tests force it to check the packing on any CPU.
//   - none: a CPU without AVX512_BF16 runs bf16 requests in float32 (gemm_kernel_name says "none").
// Rounding float32 to bfloat16 (vcvtneps2bf16): NaN stays NaN (quiet), infinities stay, zero and
// subnormals become a signed zero, anything else rounds to nearest even on the upper 16 bits.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace step::cpu {
using namespace gemm_detail;
namespace {

constexpr int kGenericMr = 4, kGenericNr = 8;

inline uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t exponent = x & 0x7f800000u;
  if (exponent == 0x7f800000u) return uint16_t((x >> 16) | ((x & 0x007fffffu) ? 0x40u : 0u));
  if (exponent == 0) return uint16_t((x >> 16) & 0x8000u);
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float pair_bits(uint16_t lo, uint16_t hi) {
  const uint32_t bits = uint32_t(lo) | uint32_t(hi) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The bfloat16 in the low (k even) or high (k odd) half of a pair, as float32.
inline float bf16_half(float pair, bool high) {
  uint32_t x;
  std::memcpy(&x, &pair, 4);
  x = high ? x & 0xffff0000u : x << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Row i of src (kc floats) as steps = (kc + 1) / 2 pairs at out[i * ld_out ...], portable.
void rows_to_pairs_generic(const float* src, int64_t ld, int rows, int kc, float* out, int64_t ld_out) {
  for (int i = 0; i < rows; ++i) {
    const float* s = src + i * ld;
    float* o = out + i * ld_out;
    for (int k = 0; k + 1 < kc; k += 2) o[k / 2] = pair_bits(to_bf16(s[k]), to_bf16(s[k + 1]));
    if (kc % 2) o[kc / 2] = pair_bits(to_bf16(s[kc - 1]), 0);
  }
}

// The packers of both kernels: rows are turned into pairs first (a thread's scratch, rows x steps),
// then transposed into slivers by the float32 packer, which moves the 32-bit pairs unchanged.
using RowsToPairs = void (*)(const float* src, int64_t ld, int rows, int kc, float* out, int64_t ld_out);

template <RowsToPairs convert>
void pack_pairs(const float* src, int64_t ld, int rows, int width, int kc, float* out) {
  const int steps = (kc + 1) / 2;
  thread_local std::vector<float> storage;
  float* pairs = scratch(storage, size_t(std::max(rows, 1)) * std::max(steps, 1));
  convert(src, ld, rows, kc, pairs, steps);
  pack_sliver(pairs, steps, rows, width, steps, out);
}

// Vectors down the rows: out[s * width + j] = pair(src[2s][v0 + j], src[2s + 1][v0 + j]) per sliver.
void pack_depth_rows_generic(const float* src, int64_t ld, int vectors, int width, int depth, float* out) {
  const int steps = (depth + 1) / 2;
  for (int v0 = 0; v0 < vectors; v0 += width, out += int64_t(width) * steps) {
    const int n = std::min(width, vectors - v0);
    for (int s = 0; s < steps; ++s) {
      const float* r0 = src + int64_t(2 * s) * ld + v0;
      const float* r1 = 2 * s + 1 < depth ? r0 + ld : nullptr;
      float* o = out + int64_t(s) * width;
      for (int j = 0; j < n; ++j) o[j] = pair_bits(to_bf16(r0[j]), r1 ? to_bf16(r1[j]) : 0);
      std::fill(o + n, o + width, 0.f);
    }
  }
}

void kernel_generic(int steps, const float* a, int64_t a_step, const float* b, const TileOut& o) {
  float acc[kGenericMr][kGenericNr] = {};
  for (int s = 0; s < steps; ++s, a += a_step, b += kGenericNr)
    for (int i = 0; i < kGenericMr; ++i) {
      const float a0 = bf16_half(a[i], false), a1 = bf16_half(a[i], true);
      for (int j = 0; j < kGenericNr; ++j) {
        // two rounded adds of exact products, as vdpbf16ps: the odd k first (a product of two
        // bfloat16 is exact in float32, so a fused multiply-add rounds alike)
        const float t = acc[i][j] + a1 * bf16_half(b[j], true);
        acc[i][j] = t + a0 * bf16_half(b[j], false);
      }
    }
  write_tile_scalar(&acc[0][0], kGenericNr, o);
}

#if defined(__x86_64__)

#define STEP_TARGET_BF16 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")))

// 32 floats at s (the first n valid, the rest read as 0) as 32 bfloat16.
STEP_TARGET_BF16 inline __m512i round32(const float* s, int n) {
  const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << std::max(n, 0)) - 1);
  const __mmask16 m1 = n >= 32 ? __mmask16(0xffff) : __mmask16((1u << std::clamp(n - 16, 0, 16)) - 1);
  const __m512 lo = _mm512_maskz_loadu_ps(m0, s), hi = _mm512_maskz_loadu_ps(m1, s + 16);
  return __m512i(_mm512_cvtne2ps_pbh(hi, lo));  // lanes 0..15 from lo, 16..31 from hi
}

STEP_TARGET_BF16 void rows_to_pairs_avx512(const float* src, int64_t ld, int rows, int kc, float* out,
                                          int64_t ld_out) {
  const int steps = (kc + 1) / 2;
  for (int i = 0; i < rows; ++i) {
    const float* s = src + i * ld;
    float* o = out + i * ld_out;
    for (int k = 0; k < kc; k += 32) {
      const int n = std::min(32, kc - k);
      const __m512i v = round32(s + k, n);
      const int pairs = std::min(16, steps - k / 2);
      _mm512_mask_storeu_epi32(o + k / 2, __mmask16((1u << pairs) - 1), v);
    }
  }
}

STEP_TARGET_BF16 void pack_depth_rows_avx512(const float* src, int64_t ld, int vectors, int width,
                                            int depth, float* out) {
  const int steps = (depth + 1) / 2;
  for (int v0 = 0; v0 < vectors; v0 += width, out += int64_t(width) * steps) {
    const int n = std::min(width, vectors - v0);
    for (int s = 0; s < steps; ++s) {
      const float* r0 = src + int64_t(2 * s) * ld + v0;
      const bool odd_tail = 2 * s + 1 >= depth;
      float* o = out + int64_t(s) * width;
      for (int j = 0; j < width; j += 16) {
        const int valid = std::clamp(n - j, 0, 16);
        const __mmask16 m = __mmask16((1u << valid) - 1);
        const __m512 x0 = _mm512_maskz_loadu_ps(m, r0 + j);
        const __m512 x1 = odd_tail ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, r0 + ld + j);
        // zero-masked forms, every lane kept (the unmasked ones make g++ 12 warn, as in gemm.cpp)
        constexpr __mmask16 kAll = 0xffff;
        const __m512i lo = _mm512_maskz_cvtepu16_epi32(kAll, __m256i(_mm512_cvtneps_pbh(x0)));
        const __m512i hi = _mm512_maskz_slli_epi32(
            kAll, _mm512_maskz_cvtepu16_epi32(kAll, __m256i(_mm512_cvtneps_pbh(x1))), 16);
        const int lanes = std::min(16, width - j);
        _mm512_mask_storeu_epi32(o + j, __mmask16((1u << lanes) - 1), _mm512_or_si512(lo, hi));
      }
    }
  }
}

STEP_TARGET_BF16 void kernel_avx512bf16(int steps, const float* a, int64_t a_step, const float* b,
                                        const TileOut& o) {
  __m512 acc[kAvx512Mr][2];
  start_tile_avx512(acc, o);
  for (int s = 0; s < steps; ++s, a += a_step, b += kAvx512Nr) {
    const __m512bh b0 = __m512bh(_mm512_loadu_ps(b)), b1 = __m512bh(_mm512_loadu_ps(b + 16));
#pragma GCC unroll 14
    for (int i = 0; i < kAvx512Mr; ++i) {
      const __m512bh ai = __m512bh(_mm512_set1_ps(a[i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
  store_tile_avx512(acc, o);
}

#endif  // __x86_64__

const Kernel* choose_bf16_kernel() {
  static const Kernel generic{"bf16-generic", kGenericMr, kGenericNr, kernel_generic, 2,
                              pack_pairs<rows_to_pairs_generic>, pack_depth_rows_generic};
  const Kernel* best = nullptr;
#if defined(__x86_64__)
  static const Kernel avx512{"avx512bf16", kAvx512Mr, kAvx512Nr, kernel_avx512bf16, 2,
                             pack_pairs<rows_to_pairs_avx512>, pack_depth_rows_avx512};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512bf16"))
    best = &avx512;
#endif
  const char* wanted = std::getenv("STEP_SEG_BF16_KERNEL");
  if (!wanted) return best;
  if (std::strcmp(wanted, "generic") == 0) return &generic;
  if (std::strcmp(wanted, "none") == 0) return nullptr;
  return best;  // "avx512bf16", or a name this build does not know: the best the CPU runs
}

}  // namespace

const Kernel* gemm_detail::bf16_kernel() {
  static const Kernel* kernel = choose_bf16_kernel();
  return kernel;
}

}  // namespace step::cpu
