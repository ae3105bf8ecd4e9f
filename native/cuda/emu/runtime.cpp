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
#include <string>
#include <thread>
#include <vector>

#include "runtime_state.h"

namespace step_emu {
namespace runtime_detail {
namespace {

constexpr size_t kAlign = 256, kRedzone = 256;  // allocation alignment; the unregistered gap after each
constexpr size_t kDefaultDynamicSmem = 48 * 1024, kMaxDynamicSmem = 232448;  // sm_90: 227 KiB opt-in

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

// Use of the legacy stream while a blocking stream (not cudaStreamNonBlocking) captures: the legacy
// stream would depend on the capture (programming guide, "Prohibited and Unhandled Operations";
// cudaStreamIsCapturing's doc names cudaErrorStreamCaptureImplicit). Those captures are invalidated.
cudaError_t legacy_use(const char* api) {
  if (!blocking_capture_active()) return cudaSuccess;
  for (auto& [p, s] : st().streams)
    if (s->capture && !(s->flags & cudaStreamNonBlocking)) invalidate(*s->capture);
  return fail(cudaErrorStreamCaptureImplicit, std::string(api) + " on the legacy stream while a blocking stream captures");
}

}  // namespace

State& st() {
  static State* s = new State;
  return *s;
}

cudaError_t sticky() {
  std::lock_guard<std::mutex> lock(st().fault_mutex);
  return st().fault;
}
cudaError_t fail(cudaError_t code, std::string detail) {
  t_last.code = code, t_last.detail_code = code, t_last.detail = std::move(detail);
  return code;
}

// ---- streams and capture ------------------------------------------------------------------------

bool is_legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread; }

// *out = the stream, nullptr for the legacy stream; false for an unknown handle.
bool resolve(cudaStream_t s, CUstream_st** out) {
  *out = is_legacy(s) ? nullptr : s;
  return is_legacy(s) || st().streams.count(s);
}

void invalidate(Capture& c) { c.invalidated = true, c.nodes.clear(); }

bool blocking_capture_active() {
  for (auto& [p, s] : st().streams)
    if (s->capture && !(s->flags & cudaStreamNonBlocking)) return true;
  return false;
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

namespace {

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
