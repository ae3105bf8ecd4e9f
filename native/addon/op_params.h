// op_params.h: the checked reading of an op's params object, one reader per parameter struct of
// native/core/ops.h (declared by op_table.h, defined in op_params.cpp), shared by the two op test
// exports: `ops` (ops_binding.cpp, the CPU backend) and `cudaOps` (cuda_binding.cpp, the CUDA ops).
// No CUDA header here: this compiles in every build.
//
// A `Call` is the params object of one call. Each typed array it hands out is checked first (its type,
// and at least the elements the op reads or writes: a TypeError for the wrong type, a RangeError for
// too few elements, both naming the option), and then resolved where the op reads it:
//   host mode (Call itself): the JS typed array's own memory, for the CPU ops;
//   device mode (DeviceCall, cuda_call.h, CUDA builds only): a device copy of it.
// Indices the op follows (offsets, rects, ...) are checked on the host before any array is
// resolved, so a reader throws before anything reaches the device. Errors name the export and the op:
// "ops.gemm: expected ... for a but received Float32Array of length 6".
// dtypes, as in ops.h: float32 Float32Array, bf16 Uint16Array (raw bits), int32 Int32Array, uint8
// Uint8Array, token rects Int32Array (image, row, col, size per rect).
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace step::addon {

// The JS typed array of each element type, and its name in errors.
template <typename T>
struct ArrayKind;
#define STEP_ARRAY_KIND(T, type, name)                      \
  template <>                                               \
  struct ArrayKind<T> {                                     \
    static constexpr napi_typedarray_type kType = type;     \
    static constexpr const char* kName = name;              \
  };
STEP_ARRAY_KIND(float, napi_float32_array, "a Float32Array")
STEP_ARRAY_KIND(uint16_t, napi_uint16_array, "a Uint16Array (bf16 bits)")
STEP_ARRAY_KIND(int32_t, napi_int32_array, "an Int32Array")
STEP_ARRAY_KIND(uint8_t, napi_uint8_array, "a Uint8Array")
#undef STEP_ARRAY_KIND

// "Float32Array of length 3", "number 1.5", "undefined": the `received` half of an error message.
std::string describe(const Napi::Value& v);

// Elements of a (rows, cols) matrix with row stride `stride`: the last row need not be whole.
inline int64_t span(int64_t rows, int64_t stride, int64_t cols) { return rows > 0 ? (rows - 1) * stride + cols : 0; }

// How the op uses an array. kInOrBf16 / kOutOrBf16: a float32 array that the CUDA op may take as a
// bf16 twin instead (another option), so required on the host and optional on the device.
enum class Use { kIn, kOut, kOptionalIn, kOptionalOut, kInOrBf16, kOutOrBf16 };

// The params of one call; host mode. `where` prefixes every error: "ops.gemm", "cudaOps.tokenHalt".
class Call {
 public:
  Call(const Napi::Value& params, std::string where) : Call(params, std::move(where), false) {}
  virtual ~Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  Napi::Env env() const { return params_.Env(); }
  bool on_device() const { return on_device_; }
  bool has(const char* key) const;

  [[noreturn]] void fail_type(const std::string& expected, const char* key) const;
  [[noreturn]] void fail_range(const std::string& message) const;

  int integer(const char* key, int min = 0) const;  // an integer in [min, 2^31)
  int integer_or(const char* key, int fallback, int min = 0) const { return has(key) ? integer(key, min) : fallback; }
  float number(const char* key) const;
  float number_or(const char* key, float fallback) const { return has(key) ? number(key) : fallback; }
  bool boolean_or(const char* key, bool fallback) const;
  std::string string_or(const char* key, const char* fallback) const;
  std::vector<float> numbers(const char* key, uint32_t n) const;  // a JS array of exactly n numbers

  // Number of elements of the typed array `key` (checked to be of type T), 0 when absent.
  template <typename T>
  int64_t length(const char* key) const {
    return has(key) ? int64_t(view<T>(key, 0).elements) : 0;
  }

  // The host elements of the typed array `key` (at least min_elems of type T), for checks on the host.
  template <typename T>
  const T* host(const char* key, int64_t min_elems) const {
    return reinterpret_cast<const T*>(view<T>(key, min_elems).data);
  }

  // The typed array `key` (at least min_elems of type T) where the op reads or writes it (see the
  // modes above); null when an optional array is absent.
  template <typename T>
  T* array(const char* key, int64_t min_elems, Use use) {
    const bool optional = use == Use::kOptionalIn || use == Use::kOptionalOut ||
                          (on_device_ && (use == Use::kInOrBf16 || use == Use::kOutOrBf16));
    const bool output = use == Use::kOut || use == Use::kOptionalOut || use == Use::kOutOrBf16;
    if (optional && !has(key)) return nullptr;
    const View v = view<T>(key, min_elems);
    return static_cast<T*>(place(key, v.data, v.elements * sizeof(T), output));
  }

 protected:
  Call(const Napi::Value& params, std::string where, bool on_device);
  // Where the op finds `bytes` bytes of JS memory at `host`: host mode, the memory itself.
  virtual void* place(const char* key, uint8_t* host, size_t bytes, bool output);

 private:
  struct View {
    uint8_t* data;
    size_t elements;
  };
  View view_of(const char* key, int64_t min_elems, napi_typedarray_type type, const char* kind) const;
  template <typename T>
  View view(const char* key, int64_t min_elems) const {
    return view_of(key, min_elems, ArrayKind<T>::kType, ArrayKind<T>::kName);
  }

  Napi::Object params_;
  std::string where_;
  bool on_device_;
};

// ---- checks shared by several readers (op_params.cpp) ----------------------------------------------

// A packed list's offsets (batch + 1, option `offsets`), checked: offsets[0] = 0, never decreasing.
struct PackedRows {
  int64_t rows = 0;  // A = offsets[batch]
  int max_t = 0;     // the largest T
};
PackedRows check_offsets(const Call& call, int batch);

}  // namespace step::addon
