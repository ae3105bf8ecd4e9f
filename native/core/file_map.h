// file_map.h: a read-only memory map of a file, so a large weights file is read by the OS page by
// page straight into the conversion to float32, never copied whole into memory first.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace step {

class FileMap {
 public:
  explicit FileMap(const std::string& path);  // throws Error(kBadModel) when it cannot be opened
  ~FileMap();
  FileMap(const FileMap&) = delete;
  FileMap& operator=(const FileMap&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace step
