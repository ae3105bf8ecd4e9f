// weights.h: reading one tensor of a safetensors data section, checked, as float32. Shared by the
// model loaders (model.cpp for the ViT, effnet.cpp for the merge-policy trunk).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace step {

// One tensor of a safetensors file: byte range relative to the start of the data section.
struct TensorEntry {
  std::string name, dtype;  // dtype: "F32", "F16" or "BF16"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

std::string shape_str(const std::vector<int64_t>& shape);

// Checks the entry against the shape `who` needs (dtype, byte span, bounds, finite values) and
// converts it to float32. Errors are kBadModel and name the tensor.
Tensor read_tensor(const TensorEntry& e, const std::vector<int64_t>& shape, const uint8_t* data, size_t size,
                   const std::string& who);

}  // namespace step
