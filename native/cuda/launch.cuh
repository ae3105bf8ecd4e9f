// launch.cuh: the one way native/cuda launches a kernel and reaches its dynamic shared memory, so
// that the same sources build with nvcc and, as host C++, for the emulator (emu/emu.h):
//   launch<kernel>(grid, block, smem_bytes, stream, args...)   instead of kernel<<<...>>>(args...)
//   STEP_DYNAMIC_SMEM(type, name)                              instead of extern __shared__ type name[]
// Under nvcc, launch<> is exactly the <<<>>> launch. In the emulator build it hands the launch, with
// the kernel's name and its arguments copied (as CUDA copies them into parameter space), to the
// emulated runtime (emu/runtime.cpp), which runs it or records it into the graph being captured.
// Launch errors surface through cudaGetLastError() in both builds (STEP_CUDA_CHECK_LAUNCH).
#pragma once
#include <cuda_runtime.h>

#include <utility>

#if defined(STEP_SEG_CUDA_EMU)
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>

#include "emu/emu_core.h"
#endif

namespace step::cuda {

#if !defined(STEP_SEG_CUDA_EMU)

template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  Kernel<<<grid, block, smem_bytes, stream>>>(std::forward<Args>(args)...);
}

#define STEP_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]

#else

namespace emu_detail {

// "… [with auto Kernel = step::cuda::gemm_kernel_mma<Cfg, float>; …]" -> the kernel's name.
inline std::string kernel_name(const char* pretty) {
  std::string s(pretty);
  const size_t at = s.find("Kernel = ");
  if (at == std::string::npos) return s;
  size_t end = at + 9;
  for (int depth = 0; end < s.size(); ++end) {
    const char c = s[end];
    if (c == '<' || c == '(') ++depth;
    else if (c == '>' || c == ')') --depth;
    else if (depth == 0 && (c == ';' || c == ']')) break;
  }
  return s.substr(at + 9, end - at - 9);
}

template <typename F>
struct KernelParams;
template <typename... P>
struct KernelParams<void (*)(P...)> {
  using Tuple = std::tuple<std::decay_t<P>...>;
};

}  // namespace emu_detail

template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  using Params = typename emu_detail::KernelParams<decltype(Kernel)>::Tuple;
  auto launch = std::make_shared<step_emu::KernelLaunch>();
  static const std::string name = emu_detail::kernel_name(__PRETTY_FUNCTION__);
  launch->name = name;
  launch->func = reinterpret_cast<const void*>(Kernel);
  launch->grid = grid, launch->block = block, launch->dynamic_smem = smem_bytes;
  launch->run_thread = [params = Params(std::forward<Args>(args)...)]() {
    Params local = params;          // each thread's own copy of the parameters, on its fiber's stack
    step_emu::begin_kernel_body();  // memory checks from here on (the copy above reads the host heap)
    std::apply(Kernel, local);
  };
  step_emu::enqueue_launch(stream, std::move(launch));
}

#define STEP_DYNAMIC_SMEM(type, name) type* name = static_cast<type*>(::step_emu::dynamic_smem())

#endif

}  // namespace step::cuda
