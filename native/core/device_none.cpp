// device_none.cpp: probe_cuda() for binaries built without the CUDA backend (binding.gyp, or no nvcc).
#include "device.h"

// Which build this is and why it has no CUDA backend, for `step-seg doctor` and 'auto''s reason.
#if defined(STEP_SEG_BUILD_GYP)
#define kNoCudaWhy "it is the CPU-only fallback built from binding.gyp (npm install, npm rebuild)"
#elif defined(STEP_SEG_NO_NVCC)
#define kNoCudaWhy "cmake-js found no nvcc when it was built"
#else
#define kNoCudaWhy "cmake-js built it with -DSTEP_SEG_CUDA=OFF"
#endif

namespace step {

const DeviceProbe& probe_cuda() {
  static const DeviceProbe probe = [] {
    DeviceProbe p;
    p.reason = "this build of step-seg has no CUDA backend: " kNoCudaWhy;
    return p;
  }();
  return probe;
}

}  // namespace step
