// emu_core.h: the seam between the emulator's two halves (the emulator build only; see emu.h).
//   simt.cpp     the SIMT core: runs a kernel launch block by block, the threads of a block as fibers,
//                barriers and warp collectives as rendezvous; memcheck.cpp checks every memory access
//                of the kernel code (device allocations, shared memory bounds and races, alignment).
//   runtime.cpp  the emulated CUDA runtime API (cudaMalloc ... cudaGraphLaunch): allocations, copies,
//                streams, device queries, errors; graphs.cpp its stream capture, events and graphs
//                (runtime_state.h between them). It executes launches through execute_launch().
// Locking: one process-wide mutex (exec_mutex) is held by the runtime around every API call that
// touches emulated state; the core assumes it is held and takes no lock of its own.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace step_emu {

// One kernel launch, as the launch helper (launch.cuh) builds it.
struct KernelLaunch {
  std::string name;               // the kernel's name with its template arguments
  const void* func = nullptr;     // the kernel's address: the key of cudaFuncSetAttribute
  dim3 grid, block;
  size_t dynamic_smem = 0;        // bytes
  std::function<void()> run_thread;  // runs the kernel body once, for the current emulated thread
};

// ---- implemented by the core (simt.cpp, memcheck.cpp) ----

// What a GPU (sm_90) says at launch time about this configuration: cudaSuccess, or
// cudaErrorInvalidConfiguration (block over 1024 threads or its dimension limits, an empty grid or
// block, grid over its limits) or cudaErrorInvalidValue (dynamic shared memory over the kernel's
// limit, see func_max_dynamic_smem). *what gets a sentence naming the kernel and the limit.
cudaError_t validate_launch(const KernelLaunch& launch, std::string* what);

// Runs every block of a validated launch to completion. On a fault (an out-of-bounds or misaligned
// access, a shared-memory race, a barrier not every thread reached, a bad collective mask) it stops
// and returns cudaErrorIllegalAddress, cudaErrorMisalignedAddress or cudaErrorLaunchFailure with *what
// describing the fault: kernel, block, thread, address or offset.
cudaError_t execute_launch(const KernelLaunch& launch, std::string* what);

// Called by the launch helper's thread body once the parameters are copied: the kernel's own code
// starts here, and with it the checks of its memory accesses.
void begin_kernel_body();

// Live device allocations, for the checks of kernel accesses and of copies.
void register_allocation(const void* p, size_t bytes);
void unregister_allocation(const void* p);
// True when [p, p + bytes) lies inside one live allocation; otherwise false and *why says where p is.
bool check_device_range(const void* p, size_t bytes, std::string* why);

// ---- implemented by the runtime (runtime.cpp) ----

std::mutex& exec_mutex();
// The kernel's dynamic shared memory limit: 48 KiB unless cudaFuncSetAttribute raised it (227 KiB max).
size_t func_max_dynamic_smem(const void* func);
// Called by the launch helper: validates (setting the last error on failure), then runs the launch
// now or records it into the graph being captured on `stream`.
void enqueue_launch(cudaStream_t stream, std::shared_ptr<KernelLaunch> launch);

// Test hooks (exported to the tests through the addon's emulator binding).
void set_memory_capacity(size_t bytes);  // default 16 GiB, or STEP_SEG_EMU_MEMORY_MB
void reset_after_fault();                // clears a sticky fault so later tests can run
std::string last_fault();                // the last fault's description ("" if none)

}  // namespace step_emu
