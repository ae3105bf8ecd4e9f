// bindings.h: what the addon's files share: the per-environment data and the exported functions that
// init() (addon.cpp) registers.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>

namespace step::addon {

// Memory that calls in flight have reserved (lib/memory.ts), process-wide: every environment's calls
// count against the one budget (process_binding.cpp).
extern std::atomic<int64_t> g_reserved;

// Per-environment state (the main thread and every worker_threads Worker that loads the addon each
// have their own): JS handles never outlive or cross the environment that made them, so no static
// holds one. Freed by Node when the environment is torn down (a Worker exits). Each environment keeps
// its own share of g_reserved, given back when it is torn down (a Worker terminated mid-call never
// releases its reservations itself).
struct AddonData {
  Napi::FunctionReference model_ctor;  // NativeModel, for results of createModel
  int64_t reserved = 0;                // this environment's share of g_reserved (main thread only)
  ~AddonData() { g_reserved -= reserved; }
};

inline AddonData& addon_data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) throw Napi::Error::New(env, "step-seg: the addon is not initialised in this environment");
  return *d;
}

// model_binding.cpp: the NativeModel class (forwardFeatures, segment, dispose, cacheInfo) and createModel.
Napi::Function define_native_model(Napi::Env env);
Napi::Value create_model(const Napi::CallbackInfo& info);

// process_binding.cpp: the process and its devices, and memory that is not a model's.
Napi::Value probe_cuda(const Napi::CallbackInfo& info);
Napi::Value cpu_info(const Napi::CallbackInfo& info);
Napi::Value set_num_threads(const Napi::CallbackInfo& info);
Napi::Value capture(const Napi::CallbackInfo& info);
Napi::Value drop_alpha(const Napi::CallbackInfo& info);
Napi::Value memory_reserve(const Napi::CallbackInfo& info);
Napi::Value memory_release(const Napi::CallbackInfo& info);
Napi::Value memory_reserved(const Napi::CallbackInfo& info);

}  // namespace step::addon
