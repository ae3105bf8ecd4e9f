// test_support.cu: the device memory and event timing of test_support.h, for the op tests and the
// benchmark only. Plain CUDA runtime calls on the legacy default stream, each checked with
// STEP_CUDA_CHECK (common.cuh) so that a failure reaches JavaScript with the CUDA error text.
#include <algorithm>
#include <utility>
#include <vector>

#include "common.cuh"
#include "test_support.h"

namespace step::cuda {

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  STEP_CUDA_CHECK(cudaMalloc(&data_, std::max<size_t>(bytes, 1)));
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) cudaFree(data_);  // no throw from a destructor; a failed free leaves a sticky error behind anyway
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host) {
  if (bytes_) STEP_CUDA_CHECK(cudaMemcpy(data_, host, bytes_, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* host) const {
  if (bytes_) STEP_CUDA_CHECK(cudaMemcpy(host, data_, bytes_, cudaMemcpyDeviceToHost));
}

void device_synchronize() {
  STEP_CUDA_CHECK(cudaGetLastError());
  STEP_CUDA_CHECK(cudaDeviceSynchronize());
}

namespace {

// The events of one timing run, destroyed even when a launch throws.
class EventPairs {
 public:
  explicit EventPairs(int n) : events_(2 * size_t(n), nullptr) {
    for (cudaEvent_t& e : events_) STEP_CUDA_CHECK(cudaEventCreate(&e));
  }
  ~EventPairs() {
    for (cudaEvent_t e : events_)
      if (e) cudaEventDestroy(e);
  }
  EventPairs(const EventPairs&) = delete;
  EventPairs& operator=(const EventPairs&) = delete;
  cudaEvent_t start(int i) const { return events_[2 * size_t(i)]; }
  cudaEvent_t stop(int i) const { return events_[2 * size_t(i) + 1]; }

 private:
  std::vector<cudaEvent_t> events_;
};

}  // namespace

double time_median_ms(const std::function<void(void* stream)>& launch, int iterations, int warmup) {
  STEP_CHECK(iterations > 0 && warmup >= 0, "time_median_ms: iterations must be positive");
  for (int i = 0; i < warmup; ++i) launch(nullptr);
  device_synchronize();
  EventPairs events(iterations);
  for (int i = 0; i < iterations; ++i) {
    STEP_CUDA_CHECK(cudaEventRecord(events.start(i), nullptr));
    launch(nullptr);
    STEP_CUDA_CHECK(cudaEventRecord(events.stop(i), nullptr));
  }
  device_synchronize();
  std::vector<float> ms(iterations);
  for (int i = 0; i < iterations; ++i) STEP_CUDA_CHECK(cudaEventElapsedTime(&ms[i], events.start(i), events.stop(i)));
  std::sort(ms.begin(), ms.end());
  return iterations % 2 ? ms[iterations / 2] : 0.5 * (double(ms[iterations / 2 - 1]) + ms[iterations / 2]);
}

}  // namespace step::cuda
