// packed_weights.h: a model's Linear (and 1 x 1 convolution) weights in the backend's pre-packed form
// for gemm (Backend::pack_weights, GemmParams::w_packed), built on first use and kept for the life of
// the model. The unpacked weights stay too (other backends, tests). Thread-safe: forwards may run
// concurrently; the first one to need a weight packs it under the lock.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "backend.h"

namespace step {

class PackedWeightCache {
 public:
  // The packed form of w (N, K) row-major, or null when this backend packs per call. `name` names w:
  // the same name always comes with the same w, N and K. Keyed by the backend's name as well, since
  // backends of one name pack alike (the CPU form depends only on the process's micro-kernel).
  const void* get(Backend& backend, const std::string& name, const float* w, int N, int K) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto key = std::make_pair(std::string(backend.name()), name);
    auto it = packed_.find(key);
    if (it == packed_.end()) it = packed_.emplace(std::move(key), backend.pack_weights(w, N, K)).first;
    return it->second.get();
  }

 private:
  std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<const void>> packed_;
};

}  // namespace step
