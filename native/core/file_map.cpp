// file_map.cpp: POSIX mmap behind FileMap.
#include "file_map.h"

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <vector>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"

namespace step {

FileMap::FileMap(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(ErrorCode::kBadModel, "cannot open weights file " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(ErrorCode::kBadModel, "cannot stat weights file " + path + ": " + std::strerror(errno));
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw Error(ErrorCode::kBadModel, "cannot map weights file " + path + ": " + std::strerror(errno));
    }
    ::madvise(p, size_, MADV_SEQUENTIAL);
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

FileMap::~FileMap() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {
int64_t ns(const struct timespec& t) { return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec; }
}  // namespace

FileSource::FileSource(const std::string& path, uint64_t data_offset) : path_(path), data_offset_(data_offset) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(ErrorCode::kBadModel, "cannot open weights file " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    ::close(fd_);
    throw Error(ErrorCode::kBadModel, "cannot stat weights file " + path + ": " + std::strerror(errno));
  }
  size_ = uint64_t(st.st_size), ino_ = uint64_t(st.st_ino), mtime_ns_ = ns(st.st_mtim), ctime_ns_ = ns(st.st_ctim);
  if (data_offset_ > size_) {
    ::close(fd_);
    changed("it is now shorter than its own header");
  }
}

FileSource::~FileSource() {
  if (fd_ >= 0) ::close(fd_);
}

void FileSource::changed(const std::string& how) const {
  throw Error(ErrorCode::kBadModel, "the weights file " + path_ + " changed while it was loading (" + how +
                                        "): load it again once it has been written");
}

void FileSource::read(uint64_t offset, size_t n, void* dst) const {
  if (offset > size() || n > size() - offset)
    throw Error(ErrorCode::kBadModel, "bytes " + std::to_string(offset) + " to " + std::to_string(offset + n) +
                                          " lie outside the data section of " + std::to_string(size()) + " bytes");
  uint8_t* out = static_cast<uint8_t*>(dst);
  uint64_t at = data_offset_ + offset;
  while (n > 0) {
    const ssize_t got = ::pread(fd_, out, std::min<size_t>(n, size_t(1) << 30), off_t(at));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::kBadModel, "cannot read weights file " + path_ + ": " + std::strerror(errno));
    }
    if (got == 0) changed("it is now shorter than when it was opened");
    out += got, at += uint64_t(got), n -= size_t(got);
  }
}

void FileSource::expect_prefix(const uint8_t* expected, size_t n, uint64_t file_size) const {
  if (file_size != size_) changed("its size went from " + std::to_string(file_size) + " to " + std::to_string(size_) + " bytes");
  std::vector<uint8_t> got(n);
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd_, got.data() + done, n - done, off_t(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) changed("its header can no longer be read");
    done += size_t(r);
  }
  if (std::memcmp(got.data(), expected, n) != 0) changed("its header is not the one that was read");
}

void FileSource::expect_unchanged() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) changed(std::string("fstat: ") + std::strerror(errno));
  if (uint64_t(st.st_size) != size_) changed("its size went from " + std::to_string(size_) + " to " + std::to_string(st.st_size) + " bytes");
  if (ns(st.st_mtim) != mtime_ns_ || ns(st.st_ctim) != ctime_ns_ || uint64_t(st.st_ino) != ino_) changed("it was written to");
}

}  // namespace step
