// js_values.cpp: the addon's converters (js_values.h).
#include "js_values.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../core/errors.h"

namespace step::addon {

void throw_bad_input(Napi::Env env, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, error_code_name(ErrorCode::kBadInput)));
  throw err;
}
int to_int(const Napi::Value& v, const std::string& what, double min, double max) {
  if (!v.IsNumber()) throw_bad_input(v.Env(), "expected a number for " + what);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || d != std::floor(d))
    throw_bad_input(v.Env(), what + " must be an integer from " + std::to_string(int64_t(min)) + " to " + std::to_string(int64_t(max)) +
                                 " but is " + std::to_string(d));
  return int(d);
}
int64_t to_int64(const Napi::Value& v, const std::string& what) {
  if (!v.IsNumber()) throw_bad_input(v.Env(), "expected a number for " + what);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 9007199254740991.0) || d != std::floor(d))
    throw_bad_input(v.Env(), what + " must be an integer from 0 to 2^53 - 1 but is " + std::to_string(d));
  return int64_t(d);
}
float to_float(const Napi::Value& v, const std::string& what) {
  if (!v.IsNumber()) throw_bad_input(v.Env(), "expected a number for " + what);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (std::isnan(d)) throw_bad_input(v.Env(), what + " is NaN");
  return float(d);
}
Napi::Array to_array(const Napi::Value& v, const std::string& what) {
  if (!v.IsArray()) throw_bad_input(v.Env(), "expected an array for " + what);
  return v.As<Napi::Array>();
}
double get_double(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("expected a number for ") + key);
  return v.As<Napi::Number>().DoubleValue();
}
bool get_bool(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsBoolean() && v.As<Napi::Boolean>().Value();
}

namespace {
void free_external(napi_env, void* data, void*) { std::free(data); }
}  // namespace

Napi::Float32Array to_js(Napi::Env env, const float* data, size_t n) {
  const size_t bytes = std::max<size_t>(n * sizeof(float), 1);
  void* p = std::malloc(bytes);
  if (!p) throw Error(ErrorCode::kOutOfMemory, "out of memory: cannot allocate " + std::to_string(bytes >> 20) + " MiB for a result");
  if (n) std::memcpy(p, data, n * sizeof(float));
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, n * sizeof(float), free_external, nullptr, &ab) == napi_ok)
    return Napi::Float32Array::New(env, n, Napi::ArrayBuffer(env, ab), 0);
  std::free(p);
  Napi::Float32Array a = Napi::Float32Array::New(env, n);
  if (n) std::memcpy(a.Data(), data, n * sizeof(float));
  return a;
}

Napi::Object stats_to_js(Napi::Env env, const ForwardStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("denseTokens", double(s.dense_tokens));
  o.Set("inputTokens", double(s.input_tokens));
  Napi::Array per = Napi::Array::New(env, s.per_block.size());
  for (size_t i = 0; i < s.per_block.size(); ++i) per.Set(uint32_t(i), double(s.per_block[i]));
  o.Set("perBlock", per);
  Napi::Array halted = Napi::Array::New(env, s.halted.size());
  for (size_t i = 0; i < s.halted.size(); ++i) halted.Set(uint32_t(i), double(s.halted[i]));
  o.Set("halted", halted);
  o.Set("gflops", s.gflops);
  o.Set("gflopsDense", s.dense_gflops);
  Napi::Object ms = Napi::Object::New(env);
  for (const auto& [name, v] : s.ms) ms.Set(name, v);
  o.Set("ms", ms);
  return o;
}

}  // namespace step::addon
