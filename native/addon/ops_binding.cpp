// ops_binding.cpp: `ops`, every op of the op table (op_table.h) on the CPU backend as a synchronous JS
// function, for the op tests (test/ops) and the CPU benchmark. Not part of the package's API: lib/
// never calls it. addon.cpp's init calls register_cpu_ops in every build.
//
// One call: the op's reader (op_params.cpp) checks the params object and hands out the JS typed
// arrays' own memory (host mode), then the CPU backend's method of that op runs on them in place.
// Options as cudaOps names them (cuda_binding.cpp), without the CUDA-only ones, plus:
//   precision?: 'fp32' | 'bf16' (default 'fp32'): the CpuBackend that runs the op (gemm and attention
//               differ; bf16 runs as float32 where the CPU has no bfloat16 kernel, as in a model)
//   packW?:     gemm only: pack w beforehand as a model does (Backend::pack_weights), not inside gemm
// ops.imageNormalize takes channelsLast? as well (the CUDA op writes planar output only).
// Argument errors are TypeError / RangeError naming the option; an engine error is an Error with `code`.
#include <napi.h>

#include <memory>
#include <string>

#include "../cpu/cpu_backend.h"
#include "guarded.h"
#include "op_params.h"
#include "op_table.h"

namespace {

using step::addon::Call;

// One CPU backend per precision, as model_binding.cpp's models get them.
step::Backend& backend_for(const Call& call) {
  static step::cpu::CpuBackend fp32(step::Precision::kFp32), bf16(step::Precision::kBf16);
  const std::string precision = call.string_or("precision", "fp32");
  if (precision != "fp32" && precision != "bf16") call.fail_type("'fp32' or 'bf16'", "precision");
  return precision == "bf16" ? static_cast<step::Backend&>(bf16) : fp32;
}

// What the CPU op needs beyond its struct; the returned object lives until the op has run.
template <typename Params>
std::shared_ptr<const void> cpu_extras(const Call&, step::Backend&, Params&) {
  return nullptr;
}
std::shared_ptr<const void> cpu_extras(const Call& call, step::Backend& backend, step::GemmParams& p) {
  if (!call.boolean_or("packW", false)) return nullptr;
  std::shared_ptr<const void> packed = backend.pack_weights(p.w, p.N, p.K);
  p.w_packed = packed.get();
  return packed;
}

// ops.<name>(params): info.Data() is the JS name.
template <typename Params, Params (*read)(Call&), void (step::Backend::*op)(const Params&)>
Napi::Value run_cpu(const Napi::CallbackInfo& info) {
  return step::addon::guarded(info.Env(), [&]() -> Napi::Value {
    Call call(info[0], std::string("ops.") + static_cast<const char*>(info.Data()));
    Params p = read(call);
    step::Backend& backend = backend_for(call);
    const std::shared_ptr<const void> keep = cpu_extras(call, backend, p);
    (backend.*op)(p);
    return info.Env().Undefined();
  });
}

struct CpuOp {
  const char* name;
  Napi::Value (*run)(const Napi::CallbackInfo&);
};
#define STEP_CPU_OP(stem, Params, js, backends) \
  {js, run_cpu<step::Params, step::addon::read_##stem, &step::Backend::stem>},
constexpr CpuOp kCpuOps[] = {STEP_OP_TABLE(STEP_CPU_OP)};
#undef STEP_CPU_OP

}  // namespace

// Called by addon.cpp's init: sets exports.ops.
void register_cpu_ops(Napi::Env env, Napi::Object exports) {
  Napi::Object ops = Napi::Object::New(env);
  for (const CpuOp& op : kCpuOps)
    ops.Set(op.name, Napi::Function::New(env, op.run, op.name, const_cast<char*>(op.name)));
  exports.Set("ops", ops);
}
