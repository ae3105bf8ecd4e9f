// weights.cpp: checked reading of one safetensors tensor into float32 (see weights.h).
#include "weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"

namespace step {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void MemorySource::read(uint64_t offset, size_t n, void* dst) const {
  if (offset > size_ || n > size_ - offset)
    throw Error(ErrorCode::kBadModel, "bytes " + std::to_string(offset) + " to " + std::to_string(offset + n) +
                                          " lie outside the data section of " + std::to_string(size_) + " bytes");
  if (n) std::memcpy(dst, data_ + offset, n);
}

Tensor read_tensor(const TensorEntry& e, const std::vector<int64_t>& shape, const uint8_t* data, size_t size,
                   const std::string& who) {
  return read_tensor(e, shape, MemorySource(data, size), who);
}

// Checks one entry (shape, dtype, byte range, finite values) and converts it to float32. The same
// checks and wording as load_weights in model.cpp. The bytes are read into memory owned here first
// (F32 straight into the tensor), and the checks run on that copy.
Tensor read_tensor(const TensorEntry& e, const std::vector<int64_t>& shape, const ByteSource& src, const std::string& who) {
  const uint64_t size = src.size();
  if (e.shape != shape)
    throw Error(ErrorCode::kBadModel, "tensor " + e.name + " has shape " + shape_str(e.shape) +
                                          " but " + who + " needs " + shape_str(shape));
  const size_t elem = e.dtype == "F32" ? 4 : (e.dtype == "F16" || e.dtype == "BF16") ? 2 : 0;
  if (elem == 0)
    throw Error(ErrorCode::kBadModel, "tensor " + e.name + " has dtype " + e.dtype + ": expected F32, F16 or BF16");
  uint64_t numel = 1;
  bool overflow = false;
  for (int64_t d : shape) overflow |= d < 0 || __builtin_mul_overflow(numel, uint64_t(d), &numel);
  uint64_t bytes = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t(elem), &bytes) || bytes > (uint64_t(1) << 48);
  if (overflow)
    throw Error(ErrorCode::kBadModel, "tensor " + e.name + " has shape " + shape_str(shape) + ": too large to hold");
  if (e.end < e.begin || e.end - e.begin != numel * elem)
    throw Error(ErrorCode::kBadModel, "tensor " + e.name + " spans " + std::to_string(e.end - e.begin) + " bytes but " +
                                          e.dtype + " " + shape_str(shape) + " needs " + std::to_string(numel * elem));
  if (e.end > size)
    throw Error(ErrorCode::kBadModel, "tensor " + e.name + " ends at byte " + std::to_string(e.end) +
                                          " of the data section but the file holds only " + std::to_string(size) +
                                          " bytes there: the file is truncated");
  Tensor t(shape);
  float* out = t.data();
  if (e.dtype == "F32") {
    src.read(e.begin, numel * 4, out);
  } else {
    const bool bf16 = e.dtype == "BF16";
    std::vector<uint16_t> chunk(std::min<uint64_t>(numel, 1 << 16));
    for (uint64_t at = 0; at < numel; at += chunk.size()) {
      const size_t n = size_t(std::min<uint64_t>(chunk.size(), numel - at));
      src.read(e.begin + 2 * at, 2 * n, chunk.data());
      for (size_t i = 0; i < n; ++i) out[at + i] = bf16 ? bf16_to_float(chunk[i]) : half_to_float(chunk[i]);
    }
  }
  for (size_t i = 0; i < numel; ++i)
    if (!std::isfinite(out[i]))
      throw Error(ErrorCode::kBadModel, "tensor " + e.name + " holds a non-finite value (NaN or infinity) at element " +
                                            std::to_string(i) + ": the weights are corrupt");
  return t;
}

}  // namespace step
