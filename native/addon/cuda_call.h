// cuda_call.h: the device mode of op_params.h's Call, and the table of cudaOps' entries (CUDA builds
// only; no CUDA header: device memory comes from native/cuda/test_support.h). cuda_prepare.cpp
// defines both, cuda_binding.cpp exports them.
//
// Device mode: every typed array a reader hands out is copied to a device buffer of its own (an array
// passed twice, such as gemm's residual and c, becomes one buffer, so aliasing survives; two different
// arrays over overlapping memory are refused); after the op, download() copies the output arrays back
// over the JS ones whole: elements the op must not write come back as they went, poison included.
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "../cuda/cuda_ops.h"
#include "../cuda/test_support.h"
#include "op_params.h"

namespace step::addon {

class DeviceCall final : public Call {
 public:
  DeviceCall(const Napi::Value& params, std::string where) : Call(params, std::move(where), true) {}

  // An optional count `key` that the op reads on the device: one int32 in device memory, or null.
  const int32_t* device_count(const char* key);
  // Copies every output array back over its JS memory (after a synchronise).
  void download();

 protected:
  void* place(const char* key, uint8_t* host, size_t bytes, bool output) override;

 private:
  struct Buffer {
    uint8_t* host;
    size_t bytes;
    step::cuda::DeviceBuffer device;
    bool output;
  };
  std::vector<Buffer> buffers_;
  std::vector<step::cuda::DeviceBuffer> counts_;
};

// One cudaOps entry: reads and checks the params, copies them to the device, and returns the launch
// (on `stream`, a cudaStream_t or null) that cudaOps.<name> runs once and cudaOps.time repeats.
using Launch = std::function<void(void* stream)>;
struct CudaOp {
  const char* name;
  Launch (*prepare)(DeviceCall&);
};
extern const CudaOp kCudaOps[];
extern const size_t kCudaOpCount;

const char* layernorm_kernel_name(step::cuda::LayerNormKernel kernel);

}  // namespace step::addon
