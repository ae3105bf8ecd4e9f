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

// Where the bytes of a safetensors data section come from: memory (a Buffer) or a file read with
// pread into memory the engine owns (FileSource, file_map.h), so that what is validated is what is
// used and a file that changes underneath is an error, never a fault.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;  // bytes in the data section
  // Copies n bytes from `offset` of the data section to dst; Error(kBadModel) when they cannot be read.
  virtual void read(uint64_t offset, size_t n, void* dst) const = 0;
};

class MemorySource : public ByteSource {
 public:
  MemorySource(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, size_t n, void* dst) const override;

 private:
  const uint8_t* data_;
  size_t size_;
};

// Checks the entry against the shape `who` needs (dtype, byte span, bounds, finite values) and
// converts it to float32. Errors are kBadModel and name the tensor.
Tensor read_tensor(const TensorEntry& e, const std::vector<int64_t>& shape, const ByteSource& src, const std::string& who);
Tensor read_tensor(const TensorEntry& e, const std::vector<int64_t>& shape, const uint8_t* data, size_t size,
                   const std::string& who);

}  // namespace step
