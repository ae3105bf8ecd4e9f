// device.h: what the runtime knows about the CUDA device, without any CUDA header.
// probe_cuda() is implemented by native/cuda/runtime.cu when the CUDA backend is compiled in, and by
// core/device_none.cpp otherwise. It runs once, on first use (never at module load).
#pragma once
#include <string>

namespace step {

struct DeviceProbe {
  bool compiled = false;  // CUDA backend built into this binary
  bool usable = false;    // a GPU answered and ran a kernel
  std::string reason;     // why not usable, for stats, warnings and errors
  std::string name;       // GPU name when one was found
  int driver_version = 0, runtime_version = 0, device_count = 0, compute_capability = 0;
};

const DeviceProbe& probe_cuda();

}  // namespace step
