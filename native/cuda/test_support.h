// test_support.h: device memory and event timing for the CUDA op tests and the benchmark
// (native/addon/cuda_binding.cpp), as plain C++ so that the addon includes no CUDA header. The engine
// does not use it: the CUDA runtime of the model owns its own memory and streams.
// Everything is synchronous on the legacy default stream (the stream the op entries get as null), and
// every failure throws step::Error with the CUDA error text: kOutOfMemory when an allocation fails,
// kInternal otherwise (a kernel's fault surfaces at the next synchronising call, as CUDA defines).
#pragma once
#include <cstddef>
#include <functional>

namespace step::cuda {

// One device allocation, freed on destruction; never shared (move-only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // at least 1 byte is allocated, so data() is never null
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  void upload(const void* host);      // bytes() bytes, host -> device; waits for the copy
  void download(void* host) const;    // bytes() bytes, device -> host; waits for all earlier work

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Waits for all work on the device; throws the first error a kernel raised.
void device_synchronize();

// Times `launch(stream)`: `warmup` untimed calls, then `iterations` calls, each between two CUDA
// events, all enqueued back to back on one stream before a single synchronise (so the GPU never idles
// between runs and the host's launch cost is hidden, as in a captured graph); returns the median of
// the per-call milliseconds. Inputs stay in L2 between calls where they fit (50 MB on H100 / H200).
double time_median_ms(const std::function<void(void* stream)>& launch, int iterations, int warmup);

}  // namespace step::cuda
