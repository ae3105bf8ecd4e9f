// vec_math.h: elementwise math written so the compiler vectorises it, and a marker that compiles a
// hot loop for several x86-64 levels with the best one picked at load time (GCC/Clang target_clones
// on Linux; plain baseline code elsewhere).
#pragma once
#include <cstdint>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define STEP_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define STEP_SIMD_CLONES
#endif

namespace step::cpu {

// e^x for x <= 0 to about 2 ulp (inputs below -87.3 give about 1e-38). Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r, and 2^n built in the exponent bits.
// Branch-free, no libm call, so loops over it vectorise.
inline float exp_nonpositive(float x) {
  x = x < -87.3f ? -87.3f : x;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (plain adds: vectorises, unlike floorf)
  const float n = (x * 1.44269504f + 12582912.f) - 12582912.f;
  float r = x - n * 0.693145752f;  // ln2 split in two for an exact first product
  r = r - n * 1.42860677e-6f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (int32_t(n) + 127) << 23;  // 2^n, n >= -126 after the clamp
  return p * __builtin_bit_cast(float, bits);
}

}  // namespace step::cpu
