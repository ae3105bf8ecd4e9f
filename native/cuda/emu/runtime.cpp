// runtime.cpp: the emulated CUDA runtime API of the emulator build (see emu_core.h): one sm_90 device
// whose "device memory" is host memory, streams, events, stream capture into graphs, and the two kinds
// of CUDA errors (non-sticky last error, sticky kernel fault). Kernels run through the SIMT core.
//
// Emulated: the functions the project calls, with the real signatures (<cuda_runtime.h> declares them,
// this file defines them; no libcudart is linked), their argument checks and error codes, and the rules
// of stream capture (what is recorded; what is illegal, fails and invalidates the capture).
// Not emulated: concurrency. All work runs at once, in order, on the calling thread, under exec_mutex():
// streams never overlap, a synchronize has nothing to wait for, an event is complete once recorded,
// and event times are host times (std::chrono::steady_clock), not GPU times. cudaStreamPerThread is
// the legacy stream. No managed, mapped or IPC memory, no textures, no cross-stream events in captures.
//
// Conventions: every entry point that touches state takes exec_mutex() (the core assumes it is held);
// a failing call sets this host thread's last error, with a detail that cudaGetErrorString appends;
// after a kernel fault every context call returns that sticky error until reset_after_fault(). Device
// queries (count, properties, versions) do not touch the context and keep working after a fault.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
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

namespace step_emu {
namespace runtime_detail {
namespace {

constexpr size_t kAlign = 256, kRedzone = 256;  // allocation alignment; the unregistered gap after each
constexpr size_t kDefaultDynamicSmem = 48 * 1024, kMaxDynamicSmem = 232448;  // sm_90: 227 KiB opt-in

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
State& st() {
  static State* s = new State;
  return *s;
}

cudaError_t sticky() {
  std::lock_guard<std::mutex> lock(st().fault_mutex);
  return st().fault;
}
void set_fault(cudaError_t code, const std::string& detail) {
  std::lock_guard<std::mutex> lock(st().fault_mutex);
  if (st().fault == cudaSuccess) st().fault = code, st().fault_detail = detail;
}

// This host thread's last error (cleared by cudaGetLastError), and the most recent error with its
// detail (kept for cudaGetErrorString, which callers use after clearing).
struct LastError {
  cudaError_t code = cudaSuccess, detail_code = cudaSuccess;
  std::string detail;
};
thread_local LastError t_last;

cudaError_t fail(cudaError_t code, std::string detail) {
  t_last.code = code, t_last.detail_code = code, t_last.detail = std::move(detail);
  return code;
}

std::string hex(const void* p) {
  char s[24];
  std::snprintf(s, sizeof s, "%p", p);
  return s;
}
std::string range(const void* p, size_t n) { return "[" + hex(p) + ", +" + std::to_string(n) + " bytes)"; }

size_t capacity() {  // 16 GiB, or STEP_SEG_EMU_MEMORY_MB, or set_memory_capacity()
  State& s = st();
  if (!s.capacity_known) {
    s.capacity = size_t(16) << 30, s.capacity_known = true;
    if (const char* mb = std::getenv("STEP_SEG_EMU_MEMORY_MB")) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(mb, &end, 10);
      if (end != mb && *end == '\0' && v > 0) s.capacity = size_t(v) << 20;
    }
  }
  return s.capacity;
}

// Whether [p, p + n) lies in one block of `blocks` (base -> whose size size_of gives).
template <typename Map, typename SizeOf>
bool inside(const Map& blocks, const void* p, size_t n, SizeOf size_of) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = blocks.upper_bound(a);
  if (it == blocks.begin()) return false;
  --it;
  const size_t size = size_of(it->second), off = a - it->first;
  return off <= size && n <= size - off;
}
// In a device block, redzone included: how cudaMemcpyDefault tells device pointers from host ones.
bool in_device_block(const void* p) {
  return inside(st().allocs, p, 0, [](const Alloc& a) { return a.total - 1; });
}
bool is_pinned(const void* p, size_t n) {
  return inside(st().pinned, p, n, [](size_t bytes) { return bytes; });
}

// ---- streams and capture ------------------------------------------------------------------------

bool is_legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread; }

// *out = the stream, nullptr for the legacy stream; false for an unknown handle.
bool resolve(cudaStream_t s, CUstream_st** out) {
  *out = is_legacy(s) ? nullptr : s;
  return is_legacy(s) || st().streams.count(s);
}

void invalidate(Capture& c) { c.invalidated = true, c.nodes.clear(); }

Capture* find_capture(uint64_t id) {
  for (auto& [p, s] : st().streams)
    if (s->capture && s->capture->id == id) return s->capture.get();
  return nullptr;
}

bool blocking_capture_active() {
  for (auto& [p, s] : st().streams)
    if (s->capture && !(s->flags & cudaStreamNonBlocking)) return true;
  return false;
}

// Use of the legacy stream while a blocking stream (not cudaStreamNonBlocking) captures: the legacy
// stream would depend on the capture (programming guide, "Prohibited and Unhandled Operations";
// cudaStreamIsCapturing's doc names cudaErrorStreamCaptureImplicit). Those captures are invalidated.
cudaError_t legacy_use(const char* api) {
  if (!blocking_capture_active()) return cudaSuccess;
  for (auto& [p, s] : st().streams)
    if (s->capture && !(s->flags & cudaStreamNonBlocking)) invalidate(*s->capture);
  return fail(cudaErrorStreamCaptureImplicit, std::string(api) + " on the legacy stream while a blocking stream captures");
}

// A "potentially unsafe" call (cudaMalloc, cudaFree, synchronous copies ...) during a capture, by the rules
// of cudaThreadExchangeStreamCaptureMode with every thread in its default (global) mode: refused when this
// thread began a global or thread-local capture, or any thread began a global one; those are invalidated.
cudaError_t unsafe_call(const char* api) {
  bool any = false;
  for (auto& [p, s] : st().streams) {
    Capture* c = s->capture.get();
    if (c && (c->mode == cudaStreamCaptureModeGlobal ||
              (c->mode == cudaStreamCaptureModeThreadLocal && c->thread == std::this_thread::get_id())))
      invalidate(*c), any = true;
  }
  if (!any) return cudaSuccess;
  return fail(cudaErrorStreamCaptureUnsupported, std::string(api) + " is not permitted while a stream is capturing");
}

// The checks of an operation enqueued on `stream`: handle, legacy-stream rule, invalidated capture
// (further use of its stream fails until cudaStreamEndCapture).
cudaError_t stream_op(cudaStream_t stream, const char* api, CUstream_st** s) {
  if (!resolve(stream, s)) return fail(cudaErrorInvalidResourceHandle, std::string(api) + ": unknown stream");
  if (!*s) return legacy_use(api);
  if ((*s)->capture && (*s)->capture->invalidated)
    return fail(cudaErrorStreamCaptureInvalidated, std::string(api) + ": the stream's capture was invalidated");
  return cudaSuccess;
}

// An error in an operation on a capturing stream also invalidates the capture.
cudaError_t fail_on(CUstream_st* s, cudaError_t code, std::string detail) {
  if (s && s->capture) invalidate(*s->capture);
  return fail(code, std::move(detail));
}

// ---- operations ---------------------------------------------------------------------------------

// Which sides of a copy are device memory, and whether those ranges lie in live allocations.
cudaError_t plan_copy(Node& n, cudaMemcpyKind kind, const std::string& api) {
  switch (kind) {
    case cudaMemcpyHostToHost: n.dst_device = false, n.src_device = false; break;
    case cudaMemcpyHostToDevice: n.dst_device = true, n.src_device = false; break;
    case cudaMemcpyDeviceToHost: n.dst_device = false, n.src_device = true; break;
    case cudaMemcpyDeviceToDevice: n.dst_device = true, n.src_device = true; break;
    case cudaMemcpyDefault: n.dst_device = in_device_block(n.dst), n.src_device = in_device_block(n.src); break;
    default: return fail(cudaErrorInvalidMemcpyDirection, api + ": invalid cudaMemcpyKind");
  }
  std::string why;
  if (n.bytes == 0) return cudaSuccess;
  if (n.dst_device && !check_device_range(n.dst, n.bytes, &why))
    return fail(cudaErrorInvalidValue, api + ": destination " + range(n.dst, n.bytes) + ": " + why);
  if (n.src_device && !check_device_range(n.src, n.bytes, &why))
    return fail(cudaErrorInvalidValue, api + ": source " + range(n.src, n.bytes) + ": " + why);
  if ((!n.dst_device && !n.dst) || (!n.src_device && !n.src)) return fail(cudaErrorInvalidValue, api + ": null pointer");
  return cudaSuccess;
}

// Runs one operation now; a fault is recorded as sticky. Device ranges are checked again (a graph may
// outlive its buffers): one no longer allocated is a fault, as the copy engine would fault.
cudaError_t run_node(const Node& n) {
  std::string why;
  cudaError_t err = cudaSuccess;
  if (n.kind == NodeKind::kernel) {
    err = execute_launch(*n.launch, &why);
  } else if (n.kind == NodeKind::event) {
    if (!n.event->destroyed) n.event->state = EmuEventState::recorded, n.event->time = emu_clock::now();
  } else if (n.bytes > 0) {
    const bool copy = n.kind == NodeKind::copy;
    if ((n.dst_device && !check_device_range(n.dst, n.bytes, &why)) ||
        (n.src_device && !check_device_range(n.src, n.bytes, &why))) {
      err = cudaErrorIllegalAddress;
      why = (copy ? "memcpy " + range(n.src, n.bytes) + " -> " + hex(n.dst) : "memset " + range(n.dst, n.bytes)) +
            ": " + why;
    } else if (copy) {
      std::memmove(n.dst, n.src, n.bytes);
    } else {
      std::memset(n.dst, n.value, n.bytes);
    }
  }
  if (err != cudaSuccess) set_fault(err, why);
  return err;
}

// Records `n` into the stream's capture, or runs it.
cudaError_t submit(CUstream_st* s, Node n) {
  if (!s || !s->capture) return run_node(n);
  s->capture->nodes.push_back(std::move(n));
  return cudaSuccess;
}

// The checks that open cudaMemcpy(Async) and cudaMemset(Async); *s is the stream of an async call.
cudaError_t begin_transfer(bool sync, cudaStream_t stream, const char* api, CUstream_st** s) {
  *s = nullptr;
  if (cudaError_t e = sticky()) return e;
  if (!sync) return stream_op(stream, api, s);
  if (cudaError_t e = legacy_use(api)) return e;
  return unsafe_call(api);  // synchronous: an unsafe call (the docs do not list cudaMemset; treated alike)
}

cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream, bool sync) {
  const char* api = sync ? "cudaMemcpy" : "cudaMemcpyAsync";
  CUstream_st* s = nullptr;
  if (cudaError_t e = begin_transfer(sync, stream, api, &s)) return e;
  Node n;
  n.kind = NodeKind::copy, n.dst = dst, n.src = src, n.bytes = count;
  if (cudaError_t e = plan_copy(n, kind, api)) return fail_on(s, e, t_last.detail);
  // A copy with pageable host memory cannot be captured: the runtime stages it at call time.
  if (s && s->capture && count > 0 &&
      ((!n.dst_device && !is_pinned(dst, count)) || (!n.src_device && !is_pinned(src, count))))
    return fail_on(s, cudaErrorStreamCaptureUnsupported,
                   std::string(api) + ": pageable host memory (not from cudaMallocHost) in a stream capture");
  return submit(s, std::move(n));
}

cudaError_t fill(void* dst, int value, size_t count, cudaStream_t stream, bool sync) {
  const char* api = sync ? "cudaMemset" : "cudaMemsetAsync";
  CUstream_st* s = nullptr;
  if (cudaError_t e = begin_transfer(sync, stream, api, &s)) return e;
  std::string why;
  if (count > 0 && !check_device_range(dst, count, &why))
    return fail_on(s, cudaErrorInvalidValue, std::string(api) + ": " + range(dst, count) + ": " + why);
  Node n;
  n.kind = NodeKind::fill, n.dst = dst, n.bytes = count, n.value = int(static_cast<unsigned char>(value));
  n.dst_device = true;
  return submit(s, std::move(n));
}

cudaError_t event_of(cudaEvent_t e, const char* api) {
  if (e && st().events.count(e)) return cudaSuccess;
  return fail(cudaErrorInvalidResourceHandle, std::string(api) + ": unknown event");
}

// Querying or waiting on an event last recorded in a capture: cudaErrorCapturedEvent (driver_types.h: "not
// permitted on an event which was last recorded in a capturing stream"), in every capture mode (the doc of
// cudaThreadExchangeStreamCaptureMode); invalidates that capture if still open.
cudaError_t captured_event(CUevent_st* e, const char* api) {
  if (e->state != EmuEventState::captured) return cudaSuccess;
  if (Capture* c = find_capture(e->capture_id)) invalidate(*c);
  return fail(cudaErrorCapturedEvent, std::string(api) + ": the event was last recorded in a stream capture");
}

cudaError_t wait_event(cudaEvent_t event, const char* api) {  // cudaEventQuery, cudaEventSynchronize
  if (cudaError_t e = sticky()) return e;
  if (cudaError_t e = event_of(event, api)) return e;
  return captured_event(event, api);  // otherwise complete: work runs synchronously
}

// ---- error names and texts ----------------------------------------------------------------------

struct ErrorInfo {
  cudaError_t code;
  const char *name, *text;
};
#define E(code, text) {code, #code, text}
const ErrorInfo kErrors[] = {
    E(cudaSuccess, "no error"), E(cudaErrorInvalidValue, "invalid argument"),
    E(cudaErrorMemoryAllocation, "out of memory"), E(cudaErrorInitializationError, "initialization error"),
    E(cudaErrorCudartUnloading, "driver shutting down"),
    E(cudaErrorInvalidConfiguration, "invalid configuration argument"),
    E(cudaErrorInvalidPitchValue, "invalid pitch argument"), E(cudaErrorInvalidSymbol, "invalid device symbol"),
    E(cudaErrorInvalidHostPointer, "invalid host pointer"), E(cudaErrorInvalidDevicePointer, "invalid device pointer"),
    E(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy"),
    E(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version"),
    E(cudaErrorMissingConfiguration, "__global__ function call is not configured"),
    E(cudaErrorInvalidDeviceFunction, "invalid device function"),
    E(cudaErrorNoDevice, "no CUDA-capable device is detected"), E(cudaErrorInvalidDevice, "invalid device ordinal"),
    E(cudaErrorInvalidKernelImage, "device kernel image is invalid"),
    E(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device"),
    E(cudaErrorInvalidResourceHandle, "invalid resource handle"),
    E(cudaErrorIllegalState, "the operation cannot be performed in the present state"),
    E(cudaErrorSymbolNotFound, "named symbol not found"), E(cudaErrorNotReady, "device not ready"),
    E(cudaErrorIllegalAddress, "an illegal memory access was encountered"),
    E(cudaErrorLaunchOutOfResources, "too many resources requested for launch"),
    E(cudaErrorLaunchTimeout, "the launch timed out and was terminated"),
    E(cudaErrorAssert, "device-side assert triggered"), E(cudaErrorHardwareStackError, "hardware stack error"),
    E(cudaErrorIllegalInstruction, "an illegal instruction was encountered"),
    E(cudaErrorMisalignedAddress, "misaligned address"),
    E(cudaErrorInvalidAddressSpace, "operation not supported on global/shared address space"),
    E(cudaErrorInvalidPc, "invalid program counter"), E(cudaErrorLaunchFailure, "unspecified launch failure"),
    E(cudaErrorNotPermitted, "operation not permitted"), E(cudaErrorNotSupported, "operation not supported"),
    E(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing"),
    E(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture"),
    E(cudaErrorStreamCaptureMerge, "operation would result in a merge of separate capture sequences"),
    E(cudaErrorStreamCaptureUnmatched, "capture was not ended in the same stream as it began"),
    E(cudaErrorStreamCaptureUnjoined, "capturing stream has unjoined work"),
    E(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream"),
    E(cudaErrorStreamCaptureImplicit, "operation would make the legacy stream depend on a capturing blocking stream"),
    E(cudaErrorCapturedEvent, "operation not permitted on an event last recorded in a capturing stream"),
    E(cudaErrorStreamCaptureWrongThread, "attempt to terminate a thread-local capture sequence from another thread"),
    E(cudaErrorTimeout, "wait operation timed out"), E(cudaErrorUnknown, "unknown error"),
};
#undef E

const ErrorInfo* error_info(cudaError_t e) {
  for (const ErrorInfo& i : kErrors)
    if (i.code == e) return &i;
  return nullptr;
}

}  // namespace
}  // namespace runtime_detail

// ---- the emu_core.h functions implemented here --------------------------------------------------

std::mutex& exec_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}

size_t func_max_dynamic_smem(const void* func) {
  runtime_detail::State& s = runtime_detail::st();
  std::lock_guard<std::mutex> lock(s.smem_mutex);
  auto it = s.smem.find(func);
  return it == s.smem.end() ? runtime_detail::kDefaultDynamicSmem : it->second;
}

void enqueue_launch(cudaStream_t stream, std::shared_ptr<KernelLaunch> launch) {
  using namespace runtime_detail;
  std::lock_guard<std::mutex> lock(exec_mutex());
  if (sticky()) return;  // dropped: cudaGetLastError reports the sticky fault
  CUstream_st* s = nullptr;
  if (stream_op(stream, "kernel launch", &s) != cudaSuccess) return;
  if (!launch) return void(fail_on(s, cudaErrorInvalidValue, "kernel launch: no launch"));
  std::string what;
  if (const cudaError_t err = validate_launch(*launch, &what)) return void(fail_on(s, err, what));
  Node n;
  n.kind = NodeKind::kernel, n.launch = std::move(launch);
  submit(s, std::move(n));  // run_node records a fault as sticky
}

void set_memory_capacity(size_t bytes) {
  std::lock_guard<std::mutex> lock(exec_mutex());
  runtime_detail::st().capacity = bytes, runtime_detail::st().capacity_known = true;
}

void reset_after_fault() {
  std::lock_guard<std::mutex> lock(exec_mutex());
  runtime_detail::State& s = runtime_detail::st();
  std::lock_guard<std::mutex> fault_lock(s.fault_mutex);
  s.fault = cudaSuccess, s.fault_detail.clear();
  runtime_detail::t_last = {};
}

std::string last_fault() {
  std::lock_guard<std::mutex> lock(runtime_detail::st().fault_mutex);
  return runtime_detail::st().fault_detail;
}

}  // namespace step_emu

// ---- the CUDA runtime API -----------------------------------------------------------------------

using namespace step_emu;
using namespace step_emu::runtime_detail;

#define STEP_EMU_LOCK std::lock_guard<std::mutex> step_emu_lock_(exec_mutex())
#define STEP_EMU_STICKY if (const cudaError_t e_ = sticky()) return e_
#define STEP_EMU_ENTER \
  STEP_EMU_LOCK;       \
  STEP_EMU_STICKY  // opens a context call: the lock, then the sticky fault if there is one

namespace {
template <typename T>
cudaError_t put(T* out, T value, const char* api) {  // the getters
  if (!out) return fail(cudaErrorInvalidValue, std::string(api) + ": null pointer");
  *out = value;
  return cudaSuccess;
}
}  // namespace

extern "C" {

// -- memory --

cudaError_t cudaMalloc(void** devPtr, size_t size) {
  STEP_EMU_ENTER;
  if (!devPtr) return fail(cudaErrorInvalidValue, "cudaMalloc: devPtr is null");
  if (cudaError_t e = unsafe_call("cudaMalloc")) return e;
  *devPtr = nullptr;
  if (size == 0) return cudaSuccess;
  State& s = st();
  const size_t cap = capacity(), free = cap > s.in_use ? cap - s.in_use : 0;
  if (size > free || size > SIZE_MAX - 2 * kAlign)
    return fail(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(size) + " bytes: " +
                                               std::to_string(free) + " bytes free of " + std::to_string(cap));
  const size_t total = (size + kAlign - 1) / kAlign * kAlign + kRedzone;
  void* p = std::aligned_alloc(kAlign, total);
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMalloc: no host memory for " + std::to_string(total) + " bytes");
  std::memset(p, 0xFF, total);  // uninitialised device memory: NaN as float, so an unwritten output shows
  register_allocation(p, size);
  s.allocs[reinterpret_cast<uintptr_t>(p)] = {size, total};
  s.in_use += size;
  *devPtr = p;
  return cudaSuccess;
}

// Frees even after a fault (then returning the sticky error), so that tests which recover do not leak.
cudaError_t cudaFree(void* devPtr) {
  STEP_EMU_LOCK;
  if (!devPtr) return sticky();
  if (cudaError_t e = unsafe_call("cudaFree")) return e;
  State& s = st();
  auto it = s.allocs.find(reinterpret_cast<uintptr_t>(devPtr));
  if (it == s.allocs.end()) return fail(cudaErrorInvalidValue, "cudaFree: " + hex(devPtr) + " is not an allocation");
  unregister_allocation(devPtr);
  s.in_use -= it->second.bytes;
  s.allocs.erase(it);
  std::free(devPtr);
  return sticky();
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  STEP_EMU_ENTER;
  if (!ptr) return fail(cudaErrorInvalidValue, "cudaMallocHost: ptr is null");
  if (cudaError_t e = unsafe_call("cudaMallocHost")) return e;
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  void* p = size > SIZE_MAX - kAlign ? nullptr : std::aligned_alloc(kAlign, (size + kAlign - 1) / kAlign * kAlign);
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMallocHost of " + std::to_string(size) + " bytes failed");
  st().pinned[reinterpret_cast<uintptr_t>(p)] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  STEP_EMU_LOCK;
  if (!ptr) return sticky();
  if (cudaError_t e = unsafe_call("cudaFreeHost")) return e;
  if (!st().pinned.erase(reinterpret_cast<uintptr_t>(ptr)))
    return fail(cudaErrorInvalidValue, "cudaFreeHost: " + hex(ptr) + " is not from cudaMallocHost");
  std::free(ptr);
  return sticky();
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  STEP_EMU_ENTER;
  if (!free || !total) return fail(cudaErrorInvalidValue, "cudaMemGetInfo: null pointer");
  *total = capacity();
  *free = *total > st().in_use ? *total - st().in_use : 0;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  STEP_EMU_LOCK;
  return copy(dst, src, count, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  STEP_EMU_LOCK;
  return copy(dst, src, count, kind, stream, false);
}
cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
  STEP_EMU_LOCK;
  return fill(devPtr, value, count, nullptr, true);
}
cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  STEP_EMU_LOCK;
  return fill(devPtr, value, count, stream, false);
}

// -- synchronisation and streams --

// Synchronising the device while any stream captures is invalid in every mode (programming guide: nor
// "a broader handle which encompasses an active stream capture"); every capture is invalidated.
cudaError_t cudaDeviceSynchronize(void) {
  STEP_EMU_ENTER;
  bool any = false;
  for (auto& [p, s] : st().streams)
    if (s->capture) invalidate(*s->capture), any = true;
  return any ? fail(cudaErrorStreamCaptureUnsupported, "cudaDeviceSynchronize while a stream is capturing")
             : cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: unknown stream");
  if (!s) return legacy_use("cudaStreamSynchronize");
  if (!s->capture) return cudaSuccess;
  invalidate(*s->capture);
  return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize on a capturing stream");
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  STEP_EMU_ENTER;
  if (!pStream || (flags & ~unsigned(cudaStreamNonBlocking)))
    return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: null pointer or unknown flags");
  auto s = std::make_unique<CUstream_st>();
  s->flags = flags;
  *pStream = s.get();
  st().streams.emplace(s.get(), std::move(s));
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* pStream) { return cudaStreamCreateWithFlags(pStream, cudaStreamDefault); }

// A capture still open on the stream is discarded (the docs are silent).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  STEP_EMU_LOCK;
  if (is_legacy(stream) || !st().streams.erase(stream))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: unknown stream");
  return sticky();
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: unknown stream");
  if (!s) return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture: the legacy stream cannot capture");
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return fail(cudaErrorInvalidValue, "cudaStreamBeginCapture: unknown mode");
  if (s->capture) return fail(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
  s->capture = std::make_unique<Capture>();
  s->capture->id = st().next_capture_id++, s->capture->mode = mode, s->capture->thread = std::this_thread::get_id();
  return cudaSuccess;
}

// After a fault the capture ends too (no graph), so that the stream is usable after reset_after_fault().
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph) {
  STEP_EMU_LOCK;
  CUstream_st* s = nullptr;
  if (!pGraph) return fail(cudaErrorInvalidValue, "cudaStreamEndCapture: pGraph is null");
  *pGraph = nullptr;
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamEndCapture: unknown stream");
  if (!s || !s->capture) return fail(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
  if (s->capture->mode != cudaStreamCaptureModeRelaxed && s->capture->thread != std::this_thread::get_id())
    return fail(cudaErrorStreamCaptureWrongThread, "cudaStreamEndCapture from another thread than the capture's");
  std::unique_ptr<Capture> c = std::move(s->capture);
  STEP_EMU_STICKY;
  if (c->invalidated)
    return fail(cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture: an error invalidated the capture");
  auto g = std::make_unique<CUgraph_st>();
  g->nodes = std::move(c->nodes);
  *pGraph = g.get();
  st().graphs.emplace(g.get(), std::move(g));
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* pCaptureStatus) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (!pCaptureStatus) return fail(cudaErrorInvalidValue, "cudaStreamIsCapturing: null pointer");
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamIsCapturing: unknown stream");
  *pCaptureStatus = cudaStreamCaptureStatusNone;
  if (!s && blocking_capture_active())  // as its doc says; that capture is not invalidated
    return fail(cudaErrorStreamCaptureImplicit, "cudaStreamIsCapturing on the legacy stream");
  if (s && s->capture)
    *pCaptureStatus = s->capture->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

// -- events --

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  STEP_EMU_ENTER;
  const unsigned known = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if (!event || (flags & ~known) || ((flags & cudaEventInterprocess) && !(flags & cudaEventDisableTiming)))
    return fail(cudaErrorInvalidValue, "cudaEventCreateWithFlags: null pointer or invalid flags");
  auto e = std::make_shared<CUevent_st>();
  e->flags = flags;
  *event = e.get();
  st().events.emplace(e.get(), std::move(e));
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  STEP_EMU_LOCK;
  auto it = event ? st().events.find(event) : st().events.end();
  if (it == st().events.end()) return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: unknown event");
  it->second->destroyed = true;
  st().events.erase(it);
  return sticky();
}

// In a capture the record becomes a node that sets the event's time when the graph runs. (On a GPU a plain
// cudaEventRecord in a capture only marks a point for cross-stream joins; cudaEventRecordExternal makes a node.)
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (cudaError_t e = event_of(event, "cudaEventRecord")) return e;
  if (cudaError_t e = stream_op(stream, "cudaEventRecord", &s)) return e;
  Node n;
  n.kind = NodeKind::event, n.event = st().events.at(event);
  if (s && s->capture) event->state = EmuEventState::captured, event->capture_id = s->capture->id;
  return submit(s, std::move(n));
}

cudaError_t cudaEventQuery(cudaEvent_t event) { STEP_EMU_LOCK; return wait_event(event, "cudaEventQuery"); }
cudaError_t cudaEventSynchronize(cudaEvent_t event) { STEP_EMU_LOCK; return wait_event(event, "cudaEventSynchronize"); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  STEP_EMU_ENTER;
  const char* api = "cudaEventElapsedTime";
  if (!ms) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: ms is null");
  for (cudaEvent_t e : {start, end}) {
    if (cudaError_t err = event_of(e, api)) return err;
    if (cudaError_t err = captured_event(e, api)) return err;
  }
  if (start->state == EmuEventState::never || end->state == EmuEventState::never)  // as its doc says
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was never recorded");
  if ((start->flags | end->flags) & cudaEventDisableTiming)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event has cudaEventDisableTiming");
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

// -- graphs --

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* pGraphExec, cudaGraph_t graph, unsigned long long flags) {
  STEP_EMU_ENTER;
  (void)flags;  // auto-free on launch, upload, device launch, priority: nothing to do here
  if (!pGraphExec || !graph) return fail(cudaErrorInvalidValue, "cudaGraphInstantiate: null graph or pointer");
  auto it = st().graphs.find(graph);
  if (it == st().graphs.end()) return fail(cudaErrorInvalidResourceHandle, "cudaGraphInstantiate: unknown graph");
  auto x = std::make_unique<CUgraphExec_st>();
  x->nodes = it->second->nodes;
  *pGraphExec = x.get();
  st().execs.emplace(x.get(), std::move(x));
  return cudaSuccess;
}

// A graph launched into a capturing stream is rejected with cudaErrorStreamCaptureUnsupported (so measured
// on an H200, CUDA 12.6: microsoft/onnxruntime PR #32081), invalidating the capture.
cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (cudaError_t e = stream_op(stream, "cudaGraphLaunch", &s)) return e;
  auto it = graphExec ? st().execs.find(graphExec) : st().execs.end();
  if (it == st().execs.end()) return fail_on(s, cudaErrorInvalidValue, "cudaGraphLaunch: unknown graph exec");
  if (s && s->capture) return fail_on(s, cudaErrorStreamCaptureUnsupported, "cudaGraphLaunch into a capturing stream");
  for (const Node& n : it->second->nodes)
    if (cudaError_t e = run_node(n)) return e;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  STEP_EMU_LOCK;
  if (!graph || !st().graphs.erase(graph))
    return fail(cudaErrorInvalidResourceHandle, "cudaGraphDestroy: unknown graph");
  return sticky();
}

// An unsafe call during a capture, as measured in the same onnxruntime PR (cudaErrorStreamCaptureUnsupported).
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
  STEP_EMU_LOCK;
  if (cudaError_t e = unsafe_call("cudaGraphExecDestroy")) return e;
  if (!graphExec || !st().execs.erase(graphExec))
    return fail(cudaErrorInvalidResourceHandle, "cudaGraphExecDestroy: unknown graph exec");
  return sticky();
}

// -- kernels and device --

// Allowed during a capture (not a stream operation). Only the dynamic shared memory limit has an effect.
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  STEP_EMU_ENTER;
  if (!func) return fail(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: null function");
  if (int(attr) < 0 || int(attr) >= int(cudaFuncAttributeMax))
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: unknown attribute");
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;  // carveout, clusters: ignored
  if (value < 0 || size_t(value) > kMaxDynamicSmem)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: MaxDynamicSharedMemorySize " + std::to_string(value) +
                                           " is outside sm_90's [0, " + std::to_string(kMaxDynamicSmem) + "]");
  std::lock_guard<std::mutex> lock(st().smem_mutex);
  st().smem[func] = size_t(value);
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) { return put(device, 0, "cudaGetDevice"); }
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice, "cudaSetDevice: the emulator has device 0 only");
}
cudaError_t cudaGetDeviceCount(int* count) { return put(count, 1, "cudaGetDeviceCount"); }

// An H100-like sm_90; what the emulator lacks (managed memory, cooperative and cluster launches, memory
// pools, textures) is left 0.
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: null pointer");
  if (device != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: the emulator has device 0 only");
  cudaDeviceProp p;
  std::memset(&p, 0, sizeof p);
  {
    STEP_EMU_LOCK;
    p.totalGlobalMem = capacity();
  }
  std::snprintf(p.name, sizeof p.name, "%s", "step-seg CUDA emulator (sm_90)");
  p.sharedMemPerBlock = kDefaultDynamicSmem, p.regsPerBlock = 65536, p.warpSize = 32, p.memPitch = 2147483647;
  p.maxThreadsPerBlock = 1024, p.maxThreadsDim[0] = 1024, p.maxThreadsDim[1] = 1024, p.maxThreadsDim[2] = 64;
  p.maxGridSize[0] = 2147483647, p.maxGridSize[1] = 65535, p.maxGridSize[2] = 65535;
  p.totalConstMem = 65536, p.major = 9, p.minor = 0, p.textureAlignment = 512, p.texturePitchAlignment = 32;
  p.multiProcessorCount = 132, p.canMapHostMemory = 1, p.concurrentKernels = 1, p.ECCEnabled = 1;
  p.asyncEngineCount = 2, p.unifiedAddressing = 1, p.memoryBusWidth = 5120, p.l2CacheSize = 50331648;
  p.maxThreadsPerMultiProcessor = 2048, p.streamPrioritiesSupported = 1, p.globalL1CacheSupported = 1;
  p.localL1CacheSupported = 1, p.sharedMemPerMultiprocessor = 233472, p.regsPerMultiprocessor = 65536;
  p.computePreemptionSupported = 1, p.sharedMemPerBlockOptin = kMaxDynamicSmem, p.maxBlocksPerMultiProcessor = 32;
  p.reservedSharedMemPerBlock = 1024, p.deviceNumaId = -1, p.hostNumaId = -1;
  *prop = p;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) { return put(version, 13000, "cudaRuntimeGetVersion"); }
cudaError_t cudaDriverGetVersion(int* version) { return put(version, 13000, "cudaDriverGetVersion"); }

// -- errors --

cudaError_t cudaGetLastError(void) {
  STEP_EMU_STICKY;  // reported, never cleared
  const cudaError_t e = t_last.code;
  t_last.code = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  STEP_EMU_STICKY;
  return t_last.code;
}

const char* cudaGetErrorName(cudaError_t error) {
  const ErrorInfo* i = error_info(error);
  return i ? i->name : "unrecognized error code";  // the real runtime's answer for a code it does not know
}

// The usual text, plus ": " and the detail for the sticky fault's code, or for the code of this thread's
// most recent error when it had one.
const char* cudaGetErrorString(cudaError_t error) {
  const ErrorInfo* i = error_info(error);
  const char* text = i ? i->text : "unrecognized error code";
  State& s = st();
  std::string detail;
  {
    std::lock_guard<std::mutex> lock(s.fault_mutex);
    if (error != cudaSuccess && s.fault == error) detail = s.fault_detail;
  }
  if (detail.empty() && error != cudaSuccess && t_last.detail_code == error) detail = t_last.detail;
  if (detail.empty()) return text;
  std::lock_guard<std::mutex> lock(s.text_mutex);
  return s.texts.insert(std::string(text) + ": " + detail).first->c_str();
}

}  // extern "C"
