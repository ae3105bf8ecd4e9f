// js_values.h: reading JS values into C++ and C++ results back into JS (the addon's converters).
// lib/ checks every value against the engine's limits (lib/limits.ts) before it comes here; these
// checks keep a value that slipped past from being truncated or wrapped: a coded BadInput error.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../core/model.h"

namespace step::addon {

[[noreturn]] void throw_bad_input(Napi::Env env, const std::string& message);
int to_int(const Napi::Value& v, const std::string& what, double min = -2147483648.0, double max = 2147483647.0);
int64_t to_int64(const Napi::Value& v, const std::string& what);
float to_float(const Napi::Value& v, const std::string& what);
Napi::Array to_array(const Napi::Value& v, const std::string& what);
double get_double(const Napi::Object& o, const char* key);
bool get_bool(const Napi::Object& o, const char* key);

// A copy of a typed array's elements (of exactly sizeof(T) bytes each).
template <typename T>
std::vector<T> get_vector(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string("expected a typed array for ") + what);
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.ElementSize() != sizeof(T))
    throw Napi::TypeError::New(v.Env(), std::string("wrong element type for ") + what);
  const T* p = reinterpret_cast<const T*>(static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  return std::vector<T>(p, p + ta.ElementLength());
}

// A typed array argument of exactly `n` elements of `type`, whose data pointer is returned; the array
// is kept alive in `refs`.
template <typename T>
T* out_array(const Napi::Value& v, napi_typedarray_type type, size_t n, const char* what, std::vector<Napi::ObjectReference>& refs) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type || v.As<Napi::TypedArray>().ElementLength() != n)
    throw_bad_input(v.Env(), std::string(what) + ": expected a typed array of " + std::to_string(n) + " elements of the right type");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  refs.push_back(Napi::Persistent(ta.As<Napi::Object>()));
  return reinterpret_cast<T*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

// A Float32Array copy of n floats. The memory comes from malloc, so that running out of it is a coded
// OutOfMemory error rather than V8's fatal "ArrayBuffer allocation failed" (external buffers are not
// allowed everywhere, e.g. Electron: there V8 allocates).
Napi::Float32Array to_js(Napi::Env env, const float* data, size_t n);

// { denseTokens, inputTokens, perBlock, halted, gflops, ms }
Napi::Object stats_to_js(Napi::Env env, const ForwardStats& s);

}  // namespace step::addon
