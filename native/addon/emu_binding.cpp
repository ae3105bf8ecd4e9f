// emu_binding.cpp: `emuOps`, the CUDA emulator's own test entries (emulator build only: CMake adds
// this file with -DSTEP_SEG_CUDA_EMU=ON and addon.cpp calls register_emu_ops). Driven by
// test/emu/emulator.test.ts; never part of the package's API.
//   mma(a: Uint32Array(128), b: Uint32Array(64), c: Float32Array(128)) -> Float32Array(128)
//       one warp's mma.sync.m16n8k16 bf16 (per lane: a[4], b[2], c[4], d[4])
//   ldmatrix(smem: Uint16Array(1024), addr: Int32Array(32), trans: boolean) -> Uint32Array(128)
//   plantedBugs() -> string[];  planted(name, bug: boolean, x: Float32Array) -> Float32Array
//       a planted-bug kernel or its correct twin; a caught bug throws the emulator's fault
//   capture() -> string[]: graph capture and replay, and what a capture forbids (selftest_capture)
//   lastFault() -> string;  resetFault();  setMemoryCapacity(bytes)
#include <napi.h>

#include <cstring>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "guarded.h"
#include "../cuda/emu/selftest.h"

namespace {

template <typename Array>
Array typed(const Napi::CallbackInfo& info, size_t i, size_t length, const char* what) {
  if (!info[i].IsTypedArray()) throw Napi::TypeError::New(info.Env(), std::string("emuOps: expected a typed array for ") + what);
  Array a = info[i].As<Array>();
  if (a.ElementLength() != length)
    throw Napi::RangeError::New(info.Env(), std::string("emuOps: expected ") + std::to_string(length) + " elements for " + what);
  return a;
}

using step::addon::guarded;

Napi::Value mma(const Napi::CallbackInfo& info) {
  auto a = typed<Napi::Uint32Array>(info, 0, 128, "a"), b = typed<Napi::Uint32Array>(info, 1, 64, "b");
  auto c = typed<Napi::Float32Array>(info, 2, 128, "c");
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Float32Array d = Napi::Float32Array::New(info.Env(), 128);
    step::cuda::selftest_mma(a.Data(), b.Data(), c.Data(), d.Data());
    return d;
  });
}

Napi::Value ldmatrix(const Napi::CallbackInfo& info) {
  auto smem = typed<Napi::Uint16Array>(info, 0, 1024, "smem");
  auto addr = typed<Napi::Int32Array>(info, 1, 32, "addr");
  for (size_t l = 0; l < 32; ++l)
    if (addr[l] < 0 || addr[l] > 1024 - 8) throw Napi::RangeError::New(info.Env(), "emuOps.ldmatrix: addr out of the tile");
  const bool trans = info[2].ToBoolean().Value();
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Uint32Array out = Napi::Uint32Array::New(info.Env(), 128);
    step::cuda::selftest_ldmatrix(smem.Data(), addr.Data(), trans, out.Data());
    return out;
  });
}

Napi::Value planted_bugs(const Napi::CallbackInfo& info) {
  const std::vector<std::string> names = step::cuda::planted_bug_names();
  Napi::Array a = Napi::Array::New(info.Env(), names.size());
  for (size_t i = 0; i < names.size(); ++i) a.Set(uint32_t(i), names[i]);
  return a;
}

Napi::Value planted(const Napi::CallbackInfo& info) {
  if (!info[0].IsString() || !info[2].IsTypedArray())
    throw Napi::TypeError::New(info.Env(), "emuOps.planted(name, bug, x: Float32Array)");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  const bool bug = info[1].ToBoolean().Value();
  Napi::Float32Array x = info[2].As<Napi::Float32Array>();
  std::vector<float> xs(x.Data(), x.Data() + x.ElementLength());
  return guarded(info.Env(), [&]() -> Napi::Value {
    const std::vector<float> y = step::cuda::run_planted(name, bug, xs);
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), y.size());
    std::memcpy(out.Data(), y.data(), y.size() * 4);
    return out;
  });
}

Napi::Value capture(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const std::vector<std::string> lines = step::cuda::selftest_capture();
    Napi::Array a = Napi::Array::New(info.Env(), lines.size());
    for (size_t i = 0; i < lines.size(); ++i) a.Set(uint32_t(i), lines[i]);
    return a;
  });
}

Napi::Value last_fault(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), step_emu::last_fault()); }

Napi::Value reset_fault(const Napi::CallbackInfo& info) {
  step_emu::reset_after_fault();
  return info.Env().Undefined();
}

Napi::Value set_memory_capacity(const Napi::CallbackInfo& info) {
  const double bytes = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(bytes >= 0)) throw Napi::TypeError::New(info.Env(), "emuOps.setMemoryCapacity: expected a byte count");
  step_emu::set_memory_capacity(size_t(bytes));
  return info.Env().Undefined();
}

}  // namespace

void register_emu_ops(Napi::Env env, Napi::Object exports) {
  Napi::Object ops = Napi::Object::New(env);
  ops.Set("mma", Napi::Function::New(env, mma, "mma"));
  ops.Set("ldmatrix", Napi::Function::New(env, ldmatrix, "ldmatrix"));
  ops.Set("plantedBugs", Napi::Function::New(env, planted_bugs, "plantedBugs"));
  ops.Set("planted", Napi::Function::New(env, planted, "planted"));
  ops.Set("capture", Napi::Function::New(env, capture, "capture"));
  ops.Set("lastFault", Napi::Function::New(env, last_fault, "lastFault"));
  ops.Set("resetFault", Napi::Function::New(env, reset_fault, "resetFault"));
  ops.Set("setMemoryCapacity", Napi::Function::New(env, set_memory_capacity, "setMemoryCapacity"));
  exports.Set("emuOps", ops);
}
