// process_binding.cpp: the process and its devices (probeCuda, cpuInfo, setNumThreads), capturing the
// caller's bytes (capture, dropAlpha) and the process-wide memory budget (memoryReserve, memoryRelease,
// memoryReserved).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "../core/device.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/parallel.h"
#include "bindings.h"
#include "job.h"
#include "js_values.h"

namespace step::addon {

std::atomic<int64_t> g_reserved{0};


// Which CUDA backend this binary carries: the GPU one, the CPU emulator's (tests only), or none.
#if defined(STEP_SEG_CUDA_EMU)
constexpr const char* kCudaBuild = "cuda (emulated)";
#elif defined(STEP_SEG_HAVE_CUDA)
constexpr const char* kCudaBuild = "cuda";
#else
constexpr const char* kCudaBuild = "none";
#endif

// probeCuda() -> Promise<{ compiled, usable, reason, name, driverVersion, runtimeVersion, ... }>
class ProbeJob : public Job {
 public:
  using Job::Job;

 protected:
  void run() override { probe_ = step::probe_cuda(); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("compiled", probe_.compiled), o.Set("usable", probe_.usable), o.Set("reason", probe_.reason);
    o.Set("name", probe_.name), o.Set("driverVersion", probe_.driver_version);
    o.Set("runtimeVersion", probe_.runtime_version), o.Set("deviceCount", probe_.device_count);
    o.Set("computeCapability", probe_.compute_capability);
    o.Set("emulated", kCudaBuild == std::string("cuda (emulated)"));
    return o;
  }

 private:
  step::DeviceProbe probe_;
};

Napi::Value probe_cuda(const Napi::CallbackInfo& info) {
  auto* job = new ProbeJob(info.Env());
  job->Queue();
  return job->promise();
}

// Which build system made this binary: binding.gyp defines STEP_SEG_BUILD_GYP (the CPU-only fallback
// that npm install compiles); CMakeLists.txt (cmake-js, prebuildify) is the other.
#ifdef STEP_SEG_BUILD_GYP
constexpr const char* kBuildSystem = "binding.gyp";
#else
constexpr const char* kBuildSystem = "cmake-js";
#endif

Napi::Value cpu_info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("threads", step::cpu::num_threads());
  o.Set("gemmKernel", step::cpu::gemm_kernel_name());
  o.Set("bf16Kernel", step::cpu::gemm_kernel_name(step::Precision::kBf16));
  o.Set("build", kBuildSystem);
  o.Set("cuda", kCudaBuild);
  return o;
}

Napi::Value set_num_threads(const Napi::CallbackInfo& info) {
  step::cpu::set_num_threads(to_int(info[0], "threads", 1, 4096));
  return info.Env().Undefined();
}

// ---- capturing the caller's bytes ----------------------------------------------------------------
// capture(view) -> ArrayBuffer | undefined: a copy of the bytes of a typed array, made before
// segment() returns (the caller may reuse its buffer at once). Large copies are what costs: on first
// touch every page of fresh memory faults, which costs more than the copy itself, so the copy goes
// into transparent huge pages populated up front (MADV_POPULATE_WRITE) by a few threads, each
// populating and copying its own slice. undefined when the memory cannot be had this way (the caller
// then copies in JS, where a failed allocation is a catchable RangeError); never an abort.
constexpr size_t kHugePage = size_t(2) << 20;

void unmap_capture(napi_env, void* data, void* hint) { ::munmap(data, reinterpret_cast<size_t>(hint)); }

Napi::Value capture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "capture: expected a typed array");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  const size_t n = ta.ByteLength();
  const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  if (n < kHugePage) return env.Undefined();
  const size_t mapped = (n + kHugePage - 1) / kHugePage * kHugePage;
  // over-allocate by one huge page to align the start, then give back the ends
  void* raw = ::mmap(nullptr, mapped + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return env.Undefined();
  uint8_t* base = static_cast<uint8_t*>(raw);
  uint8_t* dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(kHugePage - 1));
  if (dst > base) ::munmap(base, size_t(dst - base));
  if (base + mapped + kHugePage > dst + mapped) ::munmap(dst + mapped, size_t(base + mapped + kHugePage - (dst + mapped)));
#ifdef MADV_HUGEPAGE
  ::madvise(dst, mapped, MADV_HUGEPAGE);
#endif
  const int threads = int(std::max<size_t>(1, std::min<size_t>({4, std::thread::hardware_concurrency(), n / (32 << 20)})));
  const size_t chunk = (mapped / kHugePage + threads - 1) / threads * kHugePage;
  std::vector<int> failed(threads, 0);
  auto work = [&](int t) {
    const size_t begin = std::min(n, size_t(t) * chunk), end = std::min(n, begin + chunk);
    if (begin == end) return;
#ifdef __linux__
    // MADV_POPULATE_WRITE (Linux 5.14): fault the pages in one go; older kernels fault during the copy.
    // ENOMEM means the memory is not there: refuse rather than die on a fault later.
    if (::madvise(dst + begin, (end - begin + 4095) / 4096 * 4096, 23) != 0 && errno == ENOMEM) {
      failed[t] = 1;
      return;
    }
#endif
    std::memcpy(dst + begin, src + begin, end - begin);
  };
  std::vector<std::thread> pool;
  try {
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  } catch (const std::exception&) {  // no threads to be had: the rest on this one
  }
  for (int t = int(pool.size()) + 1; t < threads; ++t) work(t);
  work(0);
  for (std::thread& th : pool) th.join();
  for (int f : failed)
    if (f) {
      ::munmap(dst, mapped);
      return env.Undefined();
    }
  napi_value ab;
  if (napi_create_external_arraybuffer(env, dst, n, unmap_capture, reinterpret_cast<void*>(mapped), &ab) != napi_ok) {
    ::munmap(dst, mapped);  // e.g. Electron, where external buffers are not allowed
    return env.Undefined();
  }
  return Napi::Value(env, ab);
}

// dropAlpha(rgba: Uint8Array, pixels) -> Promise<void>: RGBA -> RGB in place (the first 3 * pixels bytes),
// on a libuv worker thread; the buffer is one step-seg owns (a capture or a decode), held until done.
class DropAlphaJob : public Job {
 public:
  DropAlphaJob(Napi::Env env, Napi::TypedArray rgba, size_t pixels) : Job(env), pixels_(pixels) {
    ref_ = Napi::Persistent(rgba.As<Napi::Object>());
    data_ = static_cast<uint8_t*>(rgba.ArrayBuffer().Data()) + rgba.ByteOffset();
  }

 protected:
  void run() override {
    // sequential and forward: every write lands at or before the bytes still to be read
    for (size_t i = 0; i < pixels_; ++i) {
      data_[3 * i] = data_[4 * i];
      data_[3 * i + 1] = data_[4 * i + 1];
      data_[3 * i + 2] = data_[4 * i + 2];
    }
  }
  Napi::Value result(Napi::Env env) override { return env.Undefined(); }

 private:
  Napi::ObjectReference ref_;
  uint8_t* data_;
  size_t pixels_;
};

Napi::Value drop_alpha(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "dropAlpha(rgba, pixels)");
  Napi::TypedArray rgba = info[0].As<Napi::TypedArray>();
  const double pixels = info[1].As<Napi::Number>().DoubleValue();
  if (!(pixels >= 0) || pixels * 4 > double(rgba.ByteLength()) || pixels != std::floor(pixels))
    throw Napi::RangeError::New(env, "dropAlpha: the buffer holds fewer than 4 * pixels bytes");
  auto* job = new DropAlphaJob(env, rgba, size_t(pixels));
  job->Queue();
  return job->promise();
}

// memoryReserve(bytes, limit) -> boolean: reserves `bytes` when the reservations of every call in flight
// (all environments) stay within `limit`; memoryRelease(bytes); memoryReserved() -> bytes reserved.
Napi::Value memory_reserve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t bytes = to_int64(info[0], "bytes"), limit = to_int64(info[1], "limit");
  int64_t now = g_reserved.load();
  do {
    if (now + bytes > limit) return Napi::Boolean::New(env, false);
  } while (!g_reserved.compare_exchange_weak(now, now + bytes));
  addon_data(env).reserved += bytes;
  return Napi::Boolean::New(env, true);
}
Napi::Value memory_release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData& d = addon_data(env);
  const int64_t bytes = std::min(to_int64(info[0], "bytes"), d.reserved);
  d.reserved -= bytes;
  g_reserved -= bytes;
  return env.Undefined();
}
Napi::Value memory_reserved(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(g_reserved.load())); }

}  // namespace step::addon
