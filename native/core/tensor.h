// tensor.h: the engine's owned float32 buffer and the small helpers around it.
// Activations and weights are row-major float32 on the host for the CPU backend; a buffer is 64-byte
// aligned so SIMD kernels may use aligned loads on row starts when the row length allows it.
// Allocation failure is reported as ErrorCode::kOutOfMemory, never as a crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"

namespace step {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// A float32 buffer with a shape. Copying is explicit (clone); moving is cheap.
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> dims) { reset(std::move(dims)); }

  void reset(std::vector<int64_t> dims) {
    dims_ = std::move(dims);
    size_t n = numel();
    if (n > capacity_) {
      size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      float* p = static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
      if (!p)
        throw Error(ErrorCode::kOutOfMemory,
                    "could not allocate " + std::to_string(bytes >> 20) + " MiB for a tensor");
      data_.reset(p);
      capacity_ = n;
    }
  }
  size_t numel() const {
    size_t n = 1;
    for (int64_t d : dims_) n *= static_cast<size_t>(d);
    return dims_.empty() ? 0 : n;
  }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  const std::vector<int64_t>& dims() const { return dims_; }
  int64_t dim(size_t i) const { return dims_.at(i); }
  void fill(float v) {
    float* p = data();
    for (size_t i = 0, n = numel(); i < n; ++i) p[i] = v;
  }

 private:
  std::unique_ptr<float[], AlignedFree> data_;
  size_t capacity_ = 0;
  std::vector<int64_t> dims_;
};

// Half-precision conversions used when weights are stored as float16 or bfloat16.
inline float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
      bits = sign | (uint32_t(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace step
