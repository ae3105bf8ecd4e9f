// runtime.cu: the CUDA runtime probe. Runs once on first use: runtime and driver versions, device
// count, and a no-op kernel launch on device 0, which catches a driver older than the toolkit and a
// GPU architecture this binary has no code for. The runtime is linked statically, so the addon loads
// on a machine without a driver and this probe reports why the GPU is not usable.
#include <cuda_runtime.h>

#include <string>

#include "../core/device.h"
#include "launch.cuh"

namespace step {
namespace {

__global__ void probe_kernel_noop(int* flag) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *flag = 1;
}

std::string describe(cudaError_t err) { return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err); }

}  // namespace

const DeviceProbe& probe_cuda() {
  static const DeviceProbe probe = [] {
    DeviceProbe p;
    p.compiled = true;
    cudaRuntimeGetVersion(&p.runtime_version);
    cudaError_t err = cudaDriverGetVersion(&p.driver_version);
    if (err != cudaSuccess || p.driver_version == 0) {
      p.reason = err != cudaSuccess ? "no NVIDIA driver found (" + describe(err) + ")"
                                    : "no NVIDIA driver found (libcuda.so.1 could not be loaded)";
      return p;
    }
    err = cudaGetDeviceCount(&p.device_count);
    if (err != cudaSuccess || p.device_count == 0) {
      p.reason = err != cudaSuccess ? "no usable GPU: " + describe(err) : "the driver reports no GPU";
      return p;
    }
    cudaDeviceProp prop;
    if ((err = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
      p.reason = "cannot read GPU properties: " + describe(err);
      return p;
    }
    p.name = prop.name;
    p.compute_capability = prop.major * 10 + prop.minor;
    int* flag = nullptr;
    if ((err = cudaMalloc(&flag, sizeof(int))) != cudaSuccess) {
      p.reason = "cannot allocate on " + p.name + ": " + describe(err);
      return p;
    }
    cuda::launch<probe_kernel_noop>(1, 32, 0, nullptr, flag);
    err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    cudaFree(flag);
    if (err != cudaSuccess) {
      p.reason = "a test kernel failed on " + p.name + " (sm_" + std::to_string(p.compute_capability) +
                 "): " + describe(err);
      return p;
    }
    p.usable = true;
    return p;
  }();
  return probe;
}

}  // namespace step
