// file_map.h: reading weights files. FileMap is a read-only memory map (kept for tools; the loader
// no longer maps: a mapped file rewritten underneath faults with SIGBUS); FileSource reads with pread.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "weights.h"

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

// A weights file read with pread into memory the caller owns (ByteSource): unlike a mapping, a file
// truncated or rewritten by another process while it loads gives an Error(kBadModel), never SIGBUS.
// The file is opened once; `data_offset` is where its data section starts.
class FileSource : public ByteSource {
 public:
  FileSource(const std::string& path, uint64_t data_offset);  // Error(kBadModel) when it cannot be opened
  ~FileSource() override;
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  uint64_t size() const override { return size_ - data_offset_; }
  void read(uint64_t offset, size_t n, void* dst) const override;
  // The first bytes of the file (the 8-byte length and the JSON header) must be `expected`, the bytes
  // the header was parsed from, and the file as long as it was then: else it changed in between.
  void expect_prefix(const uint8_t* expected, size_t n, uint64_t file_size) const;
  // Throws when the file's size, modification or change time differ from when it was opened.
  void expect_unchanged() const;

 private:
  [[noreturn]] void changed(const std::string& how) const;
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0, data_offset_ = 0;
  int64_t mtime_ns_ = 0, ctime_ns_ = 0;
  uint64_t ino_ = 0;
};

}  // namespace step
