// addon.cpp: the N-API surface of step-seg: init() registers the exports of the addon's files, which are
// the only ones that include napi.h. JavaScript validates, C++ computes (lib/ checks options and builds
// the weight index); the addon converts and schedules: values are copied out of JS on the main thread,
// Execute() runs the engine on a libuv worker thread and never touches JS (job.h), and results become
// typed arrays back on the main thread. Exports: createModel and NativeModel (model_binding.cpp),
// probeCuda, cpuInfo, setNumThreads, capture, dropAlpha, memoryReserve / Release / Reserved
// (process_binding.cpp), and `ops` (single ops, sync, for the op tests: ops_binding.cpp).
#include <napi.h>

#include "bindings.h"

void register_cpu_ops(Napi::Env env, Napi::Object exports);  // ops_binding.cpp: exports.ops (op tests)
#ifdef STEP_SEG_HAVE_CUDA
void register_cuda_ops(Napi::Env env, Napi::Object exports);  // cuda_binding.cpp: exports.cudaOps (tests, bench)
#endif
#ifdef STEP_SEG_CUDA_EMU
void register_emu_ops(Napi::Env env, Napi::Object exports);  // emu_binding.cpp: exports.emuOps (emulator tests)
#endif

namespace {

using namespace step::addon;

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  Napi::Function ctor = define_native_model(env);
  data->model_ctor = Napi::Persistent(ctor);
  env.SetInstanceData<AddonData>(data);  // deleted with the environment
  exports.Set("NativeModel", ctor);
  exports.Set("createModel", Napi::Function::New(env, create_model));
  exports.Set("probeCuda", Napi::Function::New(env, probe_cuda));
  exports.Set("cpuInfo", Napi::Function::New(env, cpu_info));
  exports.Set("setNumThreads", Napi::Function::New(env, set_num_threads));
  exports.Set("capture", Napi::Function::New(env, capture));
  exports.Set("dropAlpha", Napi::Function::New(env, drop_alpha));
  exports.Set("memoryReserve", Napi::Function::New(env, memory_reserve));
  exports.Set("memoryRelease", Napi::Function::New(env, memory_release));
  exports.Set("memoryReserved", Napi::Function::New(env, memory_reserved));
  register_cpu_ops(env, exports);
#ifdef STEP_SEG_HAVE_CUDA
  register_cuda_ops(env, exports);
#endif
#ifdef STEP_SEG_CUDA_EMU
  register_emu_ops(env, exports);
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(step_seg, init)
