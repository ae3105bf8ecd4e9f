// common.cuh: what every CUDA op file needs: error checks that throw step::Error, NVTX ranges for
// the host launchers, ceil_div, a warp sum, a block-wide scan, and bfloat16 helpers.
//
// Errors: STEP_CUDA_CHECK(expr) turns a failed cudaError_t into step::Error, with kOutOfMemory for
// cudaErrorMemoryAllocation and kInternal for everything else; STEP_CUDA_CHECK_LAUNCH() checks the
// launch that just happened (bad configuration, missing kernel image). Both work during stream
// capture: neither synchronises.
// bfloat16: device buffers of bf16 are `uint16_t` in the plain C++ headers (cuda_ops.h) and
// `__nv_bfloat16` here; both are the same two bytes (checked below), converted with as_bf16().
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "../core/errors.h"

namespace step::cuda {

static_assert(sizeof(__nv_bfloat16) == sizeof(uint16_t), "bf16 buffers are passed as uint16_t");

// ---- errors -------------------------------------------------------------------------------------

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  const ErrorCode code = err == cudaErrorMemoryAllocation ? ErrorCode::kOutOfMemory : ErrorCode::kInternal;
  throw Error(code, std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                        ") in " + what + " at " + file + ":" + std::to_string(line));
}

#define STEP_CUDA_CHECK(expr)                                                               \
  do {                                                                                      \
    const cudaError_t step_cuda_err_ = (expr);                                              \
    if (step_cuda_err_ != cudaSuccess)                                                      \
      ::step::cuda::throw_cuda_error(step_cuda_err_, #expr, __FILE__, __LINE__);            \
  } while (0)

// After a <<<...>>> launch: reports (and clears) a launch error. Errors raised while the kernel runs
// surface at the next synchronising call, as CUDA defines.
#define STEP_CUDA_CHECK_LAUNCH() STEP_CUDA_CHECK(cudaGetLastError())

// ---- NVTX ---------------------------------------------------------------------------------------
// One range per host launcher, named by op ("gemm", "attention", ...), so that
// `ncu --nvtx --nvtx-include "gemm/"` profiles exactly the kernels of one op. RAII: a launcher that
// throws still pops its range.
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

// ---- small integer helpers ----------------------------------------------------------------------

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Opts `kernel` into `bytes` of dynamic shared memory when that is more than the default 48 KB
// (sm_80+ allow up to 163 / 99 / 227 KB per block), once per device: bit d of `done` records device d.
// Launchers keep one `static std::atomic<uint64_t>` per kernel instantiation. cudaFuncSetAttribute
// is not a stream operation, so this is allowed while a stream is being captured.
template <typename Kernel>
void ensure_dynamic_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done) {
  if (bytes <= 48 * 1024) return;
  int device = 0;
  STEP_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  STEP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit, std::memory_order_release);
}

// ---- reductions ---------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Exclusive prefix sum of `v` over the block (blockDim.x a multiple of 32, at most 1024), in thread
// order; *total gets the block's sum, in every thread. `scratch` is 33 ints of shared memory.
// Contains __syncthreads: call from all threads.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int s = lane < warps ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += u;
    }
    if (lane < warps) scratch[lane] = s;  // inclusive sums of the warp totals
    if (lane == 31) scratch[32] = s;
  }
  __syncthreads();
  *total = scratch[32];
  return incl - v + (warp > 0 ? scratch[warp - 1] : 0);
}

// ---- element conversions ------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Two floats as a bf16x2 register: `lo` in the low half, which is the lower-index element for
// memory stores and for the mma fragments (PTX ISA, "Matrix fragments for mma.m16n8k16").
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Stores two adjacent elements (p 8-byte aligned for float, 4-byte aligned for bf16).
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(a, b);
}

inline const __nv_bfloat16* as_bf16(const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
inline __nv_bfloat16* as_bf16(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

// timm's nn.GELU: the exact erf form (CUDA's erff is within 2 ulp).
__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }

}  // namespace step::cuda
