// device_none.cpp: probe_cuda() for binaries built without the CUDA backend (binding.gyp, or no nvcc).
#include "device.h"

namespace step {

const DeviceProbe& probe_cuda() {
  static const DeviceProbe probe = [] {
    DeviceProbe p;
    p.reason = "this build of step-seg has no CUDA backend (built without nvcc)";
    return p;
  }();
  return probe;
}

}  // namespace step
