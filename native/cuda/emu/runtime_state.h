// runtime_state.h: the emulated runtime's state and the helpers shared by runtime.cpp (allocations,
// copies, streams, device queries, errors) and graphs.cpp (stream capture, events, graphs): the handle
// types behind cudaStream_t, cudaEvent_t, cudaGraph_t and cudaGraphExec_t, one operation (Node), the
// capture rules. Every helper assumes exec_mutex() is held (see runtime.cpp's conventions).
#pragma once
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "emu_core.h"

using emu_clock = std::chrono::steady_clock;
enum class EmuEventState { never, recorded, captured };

struct CUevent_st {
  unsigned flags = 0;
  EmuEventState state = EmuEventState::never;
  emu_clock::time_point time;
  uint64_t capture_id = 0;  // the capture it was last recorded in, when state == captured
  bool destroyed = false;   // graph nodes keep a destroyed event alive, and skip it
};

namespace step_emu::runtime_detail {

enum class NodeKind { kernel, copy, fill, event };

// One operation of a capture or graph: a kernel, a copy, a memset, an event record.
struct Node {
  NodeKind kind = NodeKind::kernel;
  std::shared_ptr<KernelLaunch> launch;
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
  int value = 0;
  bool dst_device = false, src_device = false;
  std::shared_ptr<CUevent_st> event;
};

struct Capture {
  uint64_t id = 0;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;  // the thread that began it
  bool invalidated = false;
  std::vector<Node> nodes;
};

}  // namespace step_emu::runtime_detail

struct CUstream_st {
  unsigned flags = 0;
  std::unique_ptr<step_emu::runtime_detail::Capture> capture;
};
struct CUgraph_st {
  std::vector<step_emu::runtime_detail::Node> nodes;
};
struct CUgraphExec_st {
  std::vector<step_emu::runtime_detail::Node> nodes;
};

namespace step_emu::runtime_detail {

struct Alloc {
  size_t bytes = 0, total = 0;  // requested; allocated (rounded up, plus the redzone)
};

// All emulated state. Under exec_mutex() except the three parts with their own mutex, which are read
// by calls that do not take it. Never destroyed: worker threads may still call in at exit.
struct State {
  size_t capacity = 0, in_use = 0;
  bool capacity_known = false;
  std::map<uintptr_t, Alloc> allocs;   // device allocations by base address
  std::map<uintptr_t, size_t> pinned;  // cudaMallocHost blocks by base address
  std::unordered_map<CUstream_st*, std::unique_ptr<CUstream_st>> streams;
  std::unordered_map<CUevent_st*, std::shared_ptr<CUevent_st>> events;
  std::unordered_map<CUgraph_st*, std::unique_ptr<CUgraph_st>> graphs;
  std::unordered_map<CUgraphExec_st*, std::unique_ptr<CUgraphExec_st>> execs;
  uint64_t next_capture_id = 1;
  std::mutex fault_mutex;  // the sticky fault
  cudaError_t fault = cudaSuccess;
  std::string fault_detail;
  std::mutex smem_mutex;  // cudaFuncSetAttribute's limits (func_max_dynamic_smem: with or without exec_mutex)
  std::unordered_map<const void*, size_t> smem;
  std::mutex text_mutex;  // cudaGetErrorString's texts with a detail, never shrunk: their pointers stay valid
  std::set<std::string> texts;
};

State& st();
cudaError_t sticky();  // the sticky fault, cudaSuccess if none
// Sets this host thread's last error (with its detail, for cudaGetErrorString) and returns `code`.
cudaError_t fail(cudaError_t code, std::string detail);

bool is_legacy(cudaStream_t s);
// *out = the stream, nullptr for the legacy stream; false for an unknown handle.
bool resolve(cudaStream_t s, CUstream_st** out);
void invalidate(Capture& c);
bool blocking_capture_active();  // a stream without cudaStreamNonBlocking captures
// A "potentially unsafe" call (cudaMalloc, cudaFree, synchronous copies ...) during a capture: refused,
// invalidating the captures it breaks (see runtime.cpp).
cudaError_t unsafe_call(const char* api);
// The checks of an operation enqueued on `stream`: handle, legacy-stream rule, invalidated capture.
cudaError_t stream_op(cudaStream_t stream, const char* api, CUstream_st** s);
// An error in an operation on a capturing stream also invalidates the capture.
cudaError_t fail_on(CUstream_st* s, cudaError_t code, std::string detail);
// Runs one operation now (a fault is recorded as sticky), or records it into the stream's capture.
cudaError_t run_node(const Node& n);
cudaError_t submit(CUstream_st* s, Node n);

}  // namespace step_emu::runtime_detail

#define STEP_EMU_LOCK std::lock_guard<std::mutex> step_emu_lock_(exec_mutex())
#define STEP_EMU_STICKY if (const cudaError_t e_ = sticky()) return e_
#define STEP_EMU_ENTER \
  STEP_EMU_LOCK;       \
  STEP_EMU_STICKY  // opens a context call: the lock, then the sticky fault if there is one
