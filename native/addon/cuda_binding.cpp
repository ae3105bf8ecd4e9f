// cuda_binding.cpp: `cudaOps`, the public entries of native/cuda/cuda_ops.h as synchronous JS functions
// for the CUDA op tests (test/ops/cuda.test.ts) and the benchmark (scripts/bench-cuda.ts). Not part of
// the package's API: lib/ never calls it. Compiled only with the CUDA backend (CMakeLists.txt; addon.cpp
// calls register_cuda_ops under STEP_SEG_HAVE_CUDA). No CUDA header here: device memory and timing come
// from native/cuda/test_support.h.
//
// One call: every typed array of the params object is copied to a device buffer of its own (an array
// passed twice, such as gemm's residual and c, becomes one buffer, so aliasing survives), the op runs on
// the legacy default stream with the variant named by `kernel`, the device is synchronised, and the
// output arrays are copied back over the JS ones whole: elements the op must not write come back as
// they went, poison included. Then everything is freed.
// dtypes, as in native/core/ops.h: float32 Float32Array, bf16 Uint16Array (raw bits), int32 Int32Array,
// uint8 Uint8Array, token rects Int32Array (image, row, col, size per rect). Device-side counts (mDevice,
// rowsDevice, tokensDevice) are plain numbers here, uploaded as one int32.
// Sizes and indices are checked before any device work, because a kernel that reads past a buffer
// leaves the CUDA context unusable for every later test: TypeError / RangeError naming the option. A
// failure of the op itself (a forced variant that cannot run the shape, a CUDA error) throws an Error
// with the engine's message and `code` (ERR_STEP_INTERNAL, ERR_STEP_OUT_OF_MEMORY).
//
// cudaOps:
//   gemm({ M, N, K, a: bf16, lda?, w: bf16, bias?, epilogue?, residual?, colScale?, c? | cBf16?, ldc?, mDevice?, kernel? })
//   attention({ batch, offsets, heads, headDim, scale, qkv? | qkvBf16?, out? | outBf16?, maxSeqlen?, kernel? })
//   layernorm({ rows, C, eps?, x, rowsIndex?, gamma, beta, y?, yBf16?, rowsDevice?, kernel? })
//   convertToBf16({ x, y })
//   imageNormalize({ src, h, w, channels, mean: [3], std: [3], outH?, outW?, out })     planar out only
//   patchGather({ images, height, width, patch, pixels, tokens, rects, out?, outBf16?, tokensDevice? })
//   tokenPosEmbed({ batch, C, prefix, prefixTokens?, posPrefix?, posGrid, gridOffset, gridW, offsets,
//                   rects, embedded, out, rowsBound? })
//   windowScore({ image, h, w, channels?, patch, gh, gw, levels, sizes, colorTau, textureTau, scores })
//   superpatchSelect({ image?, gh, gw, levels, sizes, thresholds, scores, rects, count, tokenOfPatch })
//   unshare({ K, tokens, rects, logits, gridOffset, gridW, grid, mode: 'copy' | 'blend', gridH?, flat?, tokensDevice? })
//   tokenHalt({ batch, K, prefix?, offsets, logits, threshold, topK, halt, maxSeqlen?,
//               rectOfRow?, rects?, gridOffset?, gridH?, gridW?, cellLabel? })
//   tokenCompact({ batch, C, offsets, halt, x, out, newOffsets, srcRow, rowsBound? })
//   tokenScatter({ rows, K, src, index, mask?, table, rowsDevice? })
//   upsample({ K, gh, gw, patch, logits, validH, validW, outH, outW, labels, probs? })
//   conv({ batch, inH, inW, inC, outC, kernel, stride, pad, groups?, act?, x, w, bias?, y })   (outH, outW derived)
//   avgPool({ inH, inW, C, factor, outH?, outW?, x, y })
//   time(name, params, iterations) -> median ms of cudaOps[name](params) (test_support.h; no copy back)
//   chooseGemm(M, N, K, aligned?), chooseAttention(D, aligned?), chooseLayernorm(C, aligned?) -> variant
//   cpuImageNormalize(params): the CPU op on the same params (plus channelsLast?); `ops` does not
//     export image_normalize, and the bit-identity test wants the CPU code itself as the reference.
// Settings the engine always receives from lib/ (colorTau, textureTau, threshold, topK) have no default
// here either; layernorm's eps, optional for the op tests, defaults to kDefaultLayerNormEps.
// kernel: 'auto' (the op's choose_<op>_kernel) or a variant: gemm 'simple' | 'mma128x128' | 'mma128x64'
// | 'mma64x64', attention 'naive' | 'flash', layernorm 'simple' | 'vec'.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "guarded.h"
#include "../cpu/cpu_backend.h"
#include "../cuda/cuda_ops.h"
#include "../cuda/device_model.h"
#include "../cuda/test_support.h"

namespace {

namespace cuda = step::cuda;
using Launch = std::function<void(void* stream)>;

// The one default of cudaOps for a setting the engine always receives: layernorm's eps when a test
// leaves it out (timm's LayerNorm eps, as lib/config.ts's norm_eps default).
constexpr float kDefaultLayerNormEps = 1e-6f;

// ---- reading the params object -------------------------------------------------------------------

template <typename T>
struct ArrayKind;
template <>
struct ArrayKind<float> {
  static constexpr napi_typedarray_type kType = napi_float32_array;
  static constexpr const char* kName = "a Float32Array";
};
template <>
struct ArrayKind<uint16_t> {
  static constexpr napi_typedarray_type kType = napi_uint16_array;
  static constexpr const char* kName = "a Uint16Array (bf16 bits)";
};
template <>
struct ArrayKind<int32_t> {
  static constexpr napi_typedarray_type kType = napi_int32_array;
  static constexpr const char* kName = "an Int32Array";
};
template <>
struct ArrayKind<uint8_t> {
  static constexpr napi_typedarray_type kType = napi_uint8_array;
  static constexpr const char* kName = "a Uint8Array";
};

const char* typed_array_name(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    default: return "a typed array";
  }
}

// "Float32Array of length 3", "number 1.5", "undefined": the `received` half of an error message.
std::string describe(const Napi::Value& v) {
  if (v.IsTypedArray()) {
    const Napi::TypedArray ta = v.As<Napi::TypedArray>();
    return std::string(typed_array_name(ta.TypedArrayType())) + " of length " + std::to_string(ta.ElementLength());
  }
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) return "number " + v.ToString().Utf8Value();
  if (v.IsString()) return "string '" + v.As<Napi::String>().Utf8Value() + "'";
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "boolean true" : "boolean false";
  if (v.IsArray()) return "an array";
  return "a value of type " + std::string(v.IsObject() ? "object" : "function");
}

int64_t span(int64_t rows, int64_t stride, int64_t cols) { return rows > 0 ? (rows - 1) * stride + cols : 0; }

enum class Use { kIn, kOut, kOptionalIn, kOptionalOut };

// The params of one call, and (on the device) the buffers its arrays were copied to.
class Call {
 public:
  Call(const Napi::Value& params, std::string op, bool on_device) : op_(std::move(op)), on_device_(on_device) {
    if (!params.IsObject() || params.IsArray())
      throw Napi::TypeError::New(params.Env(), "cudaOps." + op_ + ": expected an object of params but received " +
                                                   describe(params));
    params_ = params.As<Napi::Object>();
  }

  Napi::Env env() const { return params_.Env(); }
  bool has(const char* key) const {
    const Napi::Value v = params_.Get(key);
    return !v.IsUndefined() && !v.IsNull();
  }

  [[noreturn]] void fail_type(const std::string& expected, const char* key) const {
    throw Napi::TypeError::New(env(), "cudaOps." + op_ + ": expected " + expected + " for " + key + " but received " +
                                          describe(params_.Get(key)));
  }
  [[noreturn]] void fail_range(const std::string& message) const {
    throw Napi::RangeError::New(env(), "cudaOps." + op_ + ": " + message);
  }

  // An integer in [min, 2^31).
  int integer(const char* key, int min = 0) const {
    const Napi::Value v = params_.Get(key);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
    if (!(d >= min && d <= 2147483647.0 && d == std::floor(d)))
      fail_type("an integer >= " + std::to_string(min), key);
    return int(d);
  }
  int integer_or(const char* key, int fallback, int min = 0) const { return has(key) ? integer(key, min) : fallback; }
  float number(const char* key) const {
    const Napi::Value v = params_.Get(key);
    if (!v.IsNumber()) fail_type("a number", key);
    return v.As<Napi::Number>().FloatValue();
  }
  float number_or(const char* key, float fallback) const { return has(key) ? number(key) : fallback; }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const Napi::Value v = params_.Get(key);
    if (!v.IsBoolean()) fail_type("a boolean", key);
    return v.As<Napi::Boolean>().Value();
  }
  std::string string_or(const char* key, const char* fallback) const {
    if (!has(key)) return fallback;
    const Napi::Value v = params_.Get(key);
    if (!v.IsString()) fail_type("a string", key);
    return v.As<Napi::String>().Utf8Value();
  }
  // A JS array of exactly n numbers.
  std::vector<float> numbers(const char* key, uint32_t n) const {
    const Napi::Value v = params_.Get(key);
    const std::string expected = "an array of " + std::to_string(n) + " numbers";
    if (!v.IsArray() || v.As<Napi::Array>().Length() != n) fail_type(expected, key);
    std::vector<float> out;
    for (uint32_t i = 0; i < n; ++i) {
      const Napi::Value e = v.As<Napi::Array>().Get(i);
      if (!e.IsNumber()) fail_type(expected, key);
      out.push_back(e.As<Napi::Number>().FloatValue());
    }
    return out;
  }

  // Number of elements of the typed array `key` (checked to be of type T), 0 when absent.
  template <typename T>
  int64_t length(const char* key) const {
    if (!has(key)) return 0;
    return int64_t(view<T>(key, 0).elements);
  }

  // The host elements of the typed array `key` (at least min_elems of type T), for checks on the host.
  template <typename T>
  const T* host(const char* key, int64_t min_elems) const {
    return reinterpret_cast<const T*>(view<T>(key, min_elems).data);
  }

  // The typed array `key` (at least min_elems of type T) where the op reads or writes it: the device
  // copy on the device, the JS memory itself on the host; null when an optional array is absent.
  template <typename T>
  T* array(const char* key, int64_t min_elems, Use use) {
    const bool optional = use == Use::kOptionalIn || use == Use::kOptionalOut;
    const bool output = use == Use::kOut || use == Use::kOptionalOut;
    if (optional && !has(key)) return nullptr;
    const View v = view<T>(key, min_elems);
    if (!on_device_) return reinterpret_cast<T*>(v.data);
    const size_t bytes = v.elements * sizeof(T);
    for (Buffer& b : buffers_) {
      if (b.host == v.data && b.bytes == bytes) {  // the same JS memory twice: one device buffer
        b.output = b.output || output;
        return static_cast<T*>(b.device.data());
      }
      if (bytes && b.bytes && v.data < b.host + b.bytes && b.host < v.data + bytes)
        fail_range(std::string(key) + " overlaps another array of this call; pass the same array or separate ones");
    }
    buffers_.push_back({v.data, bytes, cuda::DeviceBuffer(bytes), output});
    buffers_.back().device.upload(v.data);
    return static_cast<T*>(buffers_.back().device.data());
  }

  // An optional count `key` that the op reads on the device: one int32 in device memory, or null.
  const int32_t* device_count(const char* key) {
    if (!has(key)) return nullptr;
    const int32_t value = integer(key);
    if (!on_device_) fail_range(std::string(key) + " exists on the device only");
    counts_.emplace_back(sizeof(int32_t));
    counts_.back().upload(&value);
    return static_cast<const int32_t*>(counts_.back().data());
  }

  // Copies every output array back over its JS memory (after a synchronise).
  void download() {
    for (const Buffer& b : buffers_)
      if (b.output) b.device.download(b.host);
  }

 private:
  struct View {
    uint8_t* data;
    size_t elements;
  };
  struct Buffer {
    uint8_t* host;
    size_t bytes;
    cuda::DeviceBuffer device;
    bool output;
  };

  template <typename T>
  View view(const char* key, int64_t min_elems) const {
    const Napi::Value v = params_.Get(key);
    const std::string expected = std::string(ArrayKind<T>::kName) + " of at least " + std::to_string(min_elems) +
                                 " elements";
    if (!v.IsTypedArray()) fail_type(expected, key);
    const Napi::TypedArray ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != ArrayKind<T>::kType || int64_t(ta.ElementLength()) < min_elems) fail_type(expected, key);
    uint8_t* base = static_cast<uint8_t*>(ta.ArrayBuffer().Data());
    return {base ? base + ta.ByteOffset() : nullptr, ta.ElementLength()};
  }

  Napi::Object params_;
  std::string op_;
  bool on_device_;
  std::vector<Buffer> buffers_;
  std::vector<cuda::DeviceBuffer> counts_;
};

// The variant named by `kernel`, among kinds whose names `name_of` gives.
template <typename Kernel, size_t kCount>
Kernel parse_kernel(const Call& call, const Kernel (&kinds)[kCount], const char* (*name_of)(Kernel)) {
  const std::string name = call.string_or("kernel", "auto");
  std::string known;
  for (Kernel k : kinds) {
    if (name == name_of(k)) return k;
    known += (known.empty() ? "'" : ", '") + std::string(name_of(k)) + "'";
  }
  call.fail_type("one of " + known, "kernel");
}

const char* layernorm_kernel_name(cuda::LayerNormKernel kernel) {
  switch (kernel) {
    case cuda::LayerNormKernel::kAuto: return "auto";
    case cuda::LayerNormKernel::kSimple: return "simple";
    case cuda::LayerNormKernel::kVec: return "vec";
  }
  return "unknown";
}

// ---- the ops: params -> launch --------------------------------------------------------------------
// Names (kernel, epilogue) and host-side checks come first: a misspelt name or a bad index throws before
// anything reaches the device.

Launch prepare_gemm(Call& call) {
  step::GemmParams p;
  cuda::GemmDeviceExtras x;
  static constexpr cuda::GemmKernel kKinds[] = {cuda::GemmKernel::kAuto, cuda::GemmKernel::kSimple,
                                                cuda::GemmKernel::kMma128x128, cuda::GemmKernel::kMma128x64,
                                                cuda::GemmKernel::kMma64x64};
  x.kernel = parse_kernel(call, kKinds, cuda::gemm_kernel_name);
  const std::string epilogue = call.string_or("epilogue", "none");
  if (epilogue == "none") p.epilogue = step::Epilogue::kNone;
  else if (epilogue == "gelu") p.epilogue = step::Epilogue::kGelu;
  else if (epilogue == "residual") p.epilogue = step::Epilogue::kResidual;
  else if (epilogue == "relu6") p.epilogue = step::Epilogue::kRelu6;
  else if (epilogue == "sigmoid") p.epilogue = step::Epilogue::kSigmoid;
  else call.fail_type("one of 'none', 'gelu', 'residual', 'relu6', 'sigmoid'", "epilogue");
  p.M = call.integer("M"), p.N = call.integer("N"), p.K = call.integer("K");
  p.lda = call.integer_or("lda", p.K), p.ldc = call.integer_or("ldc", p.N);
  if (p.lda < p.K || p.ldc < p.N) call.fail_range("needs lda >= K and ldc >= N");
  const int64_t c_elems = span(p.M, p.ldc, p.N);
  x.a_bf16 = call.array<uint16_t>("a", span(p.M, p.lda, p.K), Use::kIn);
  x.w_bf16 = call.array<uint16_t>("w", int64_t(p.N) * p.K, Use::kIn);
  p.bias = call.array<float>("bias", p.N, Use::kOptionalIn);
  if (p.epilogue == step::Epilogue::kResidual) {  // as ops.gemm: residual and colScale only count here
    p.residual = call.array<float>("residual", c_elems, Use::kOptionalIn);
    p.col_scale = call.array<float>("colScale", p.N, Use::kOptionalIn);
  }
  p.c = call.array<float>("c", c_elems, Use::kOptionalOut);  // may be residual's array: then one buffer
  x.c_bf16 = call.array<uint16_t>("cBf16", c_elems, Use::kOptionalOut);
  x.m_device = call.device_count("mDevice");
  return [p, x](void* stream) { cuda::gemm(p, x, stream); };
}

Launch prepare_attention(Call& call) {
  step::AttentionParams p;
  cuda::AttentionDeviceExtras x;
  static constexpr cuda::AttentionKernel kKinds[] = {cuda::AttentionKernel::kAuto, cuda::AttentionKernel::kNaive,
                                                     cuda::AttentionKernel::kFlash};
  x.kernel = parse_kernel(call, kKinds, cuda::attention_kernel_name);
  p.batch = call.integer("batch"), p.heads = call.integer("heads", 1), p.head_dim = call.integer("headDim", 1);
  p.scale = call.number_or("scale", 1.f / std::sqrt(float(p.head_dim)));
  const int32_t* offsets = call.host<int32_t>("offsets", int64_t(p.batch) + 1);
  int max_t = 0;
  if (offsets[0] != 0) call.fail_range("offsets[0] must be 0");
  for (int b = 0; b < p.batch; ++b) {
    if (offsets[b + 1] < offsets[b]) call.fail_range("offsets must not decrease");
    max_t = std::max(max_t, offsets[b + 1] - offsets[b]);
  }
  const int64_t A = offsets[p.batch], C = int64_t(p.heads) * p.head_dim;
  x.max_seqlen = call.integer_or("maxSeqlen", max_t);
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.qkv = call.array<float>("qkv", A * 3 * C, Use::kOptionalIn);
  x.qkv_bf16 = call.array<uint16_t>("qkvBf16", A * 3 * C, Use::kOptionalIn);
  p.out = call.array<float>("out", A * C, Use::kOptionalOut);
  x.out_bf16 = call.array<uint16_t>("outBf16", A * C, Use::kOptionalOut);
  return [p, x](void* stream) { cuda::attention(p, x, stream); };
}

Launch prepare_layernorm(Call& call) {
  step::LayerNormParams p;
  cuda::LayerNormDeviceExtras x;
  static constexpr cuda::LayerNormKernel kKinds[] = {cuda::LayerNormKernel::kAuto, cuda::LayerNormKernel::kSimple,
                                                     cuda::LayerNormKernel::kVec};
  x.kernel = parse_kernel(call, kKinds, layernorm_kernel_name);
  p.rows = call.integer("rows"), p.C = call.integer("C", 1), p.eps = call.number_or("eps", kDefaultLayerNormEps);
  const int64_t x_rows = call.length<float>("x") / p.C;  // rows the gather may read
  if (call.has("rowsIndex")) {
    const int32_t* index = call.host<int32_t>("rowsIndex", p.rows);
    for (int r = 0; r < p.rows; ++r)
      if (index[r] < 0 || index[r] >= x_rows)
        call.fail_range("rowsIndex[" + std::to_string(r) + "] = " + std::to_string(index[r]) + " is not a row of x (" +
                        std::to_string(x_rows) + " rows)");
  }
  p.rows_index = call.array<int32_t>("rowsIndex", p.rows, Use::kOptionalIn);
  p.x = call.array<float>("x", p.rows_index ? 0 : int64_t(p.rows) * p.C, Use::kIn);
  p.gamma = call.array<float>("gamma", p.C, Use::kIn);
  p.beta = call.array<float>("beta", p.C, Use::kIn);
  p.y = call.array<float>("y", int64_t(p.rows) * p.C, Use::kOptionalOut);
  x.y_bf16 = call.array<uint16_t>("yBf16", int64_t(p.rows) * p.C, Use::kOptionalOut);
  x.rows_device = call.device_count("rowsDevice");
  return [p, x](void* stream) { cuda::layernorm(p, x, stream); };
}

Launch prepare_convert_to_bf16(Call& call) {
  const int64_t n = call.length<float>("x");
  const float* x = call.array<float>("x", n, Use::kIn);
  uint16_t* y = call.array<uint16_t>("y", n, Use::kOut);
  return [x, y, n](void* stream) { cuda::convert_to_bf16(x, y, n, stream); };
}

// Shared by the CUDA op and its CPU reference (on the host, `call` hands out the JS memory itself).
step::ImageNormalizeParams read_image_normalize(Call& call, bool allow_channels_last) {
  step::ImageNormalizeParams p;
  p.h = call.integer("h"), p.w = call.integer("w"), p.channels = call.integer_or("channels", 3);
  if (p.channels != 3 && p.channels != 4) call.fail_type("3 or 4", "channels");
  // outH / outW default to h / w and may only pad (integer() takes a minimum, not a default).
  p.out_h = call.integer_or("outH", p.h, p.h), p.out_w = call.integer_or("outW", p.w, p.w);
  const std::vector<float> mean = call.numbers("mean", 3), stdv = call.numbers("std", 3);
  for (int c = 0; c < 3; ++c) p.mean[c] = mean[c], p.std[c] = stdv[c];
  p.channels_last = call.boolean_or("channelsLast", false);
  if (p.channels_last && !allow_channels_last)
    call.fail_range("the CUDA image_normalize writes planar (3, outH, outW) output only");
  p.src = call.array<uint8_t>("src", int64_t(p.h) * p.w * p.channels, Use::kIn);
  p.out = call.array<float>("out", 3 * int64_t(p.out_h) * p.out_w, Use::kOut);
  return p;
}

Launch prepare_image_normalize(Call& call) {
  const step::ImageNormalizeParams p = read_image_normalize(call, false);
  return [p](void* stream) { cuda::image_normalize(p, stream); };
}

Launch prepare_patch_gather(Call& call) {
  step::PatchGatherParams p;
  cuda::PatchGatherDeviceExtras x;
  p.images = call.integer("images"), p.height = call.integer("height"), p.width = call.integer("width");
  p.patch = call.integer("patch", 1), p.tokens = call.integer("tokens");
  const int32_t* rects = call.host<int32_t>("rects", 4 * int64_t(p.tokens));
  for (int t = 0; t < p.tokens; ++t) {
    const int32_t image = rects[4 * t], row = rects[4 * t + 1], col = rects[4 * t + 2], size = rects[4 * t + 3];
    if (image < 0 || image >= p.images || row < 0 || col < 0 || size < 1 ||
        (int64_t(row) + size) * p.patch > p.height || (int64_t(col) + size) * p.patch > p.width)
      call.fail_range("rect " + std::to_string(t) + " lies outside the images");
  }
  const int64_t row = 3 * int64_t(p.patch) * p.patch;
  p.pixels = call.array<float>("pixels", int64_t(p.images) * 3 * p.height * p.width, Use::kIn);
  p.rects = reinterpret_cast<const step::TokenRect*>(call.array<int32_t>("rects", 4 * int64_t(p.tokens), Use::kIn));
  p.out = call.array<float>("out", p.tokens * row, Use::kOptionalOut);
  x.out_bf16 = call.array<uint16_t>("outBf16", p.tokens * row, Use::kOptionalOut);
  x.tokens_device = call.device_count("tokensDevice");
  return [p, x](void* stream) { cuda::patch_gather(p, x, stream); };
}

Launch prepare_token_pos_embed(Call& call) {
  step::TokenPosEmbedParams p;
  cuda::TokenPosEmbedDeviceExtras x;
  p.batch = call.integer("batch"), p.C = call.integer("C", 1), p.prefix = call.integer("prefix");
  const int32_t* offsets = call.host<int32_t>("offsets", int64_t(p.batch) + 1);
  if (offsets[0] != 0) call.fail_range("offsets[0] must be 0");
  for (int b = 0; b < p.batch; ++b)
    if (offsets[b + 1] - offsets[b] < p.prefix) call.fail_range("every image needs at least `prefix` rows");
  const int64_t A = offsets[p.batch], R = A - int64_t(p.batch) * p.prefix, C = p.C;  // rows, rects
  const int32_t* grid_offset = call.host<int32_t>("gridOffset", p.batch);
  const int32_t* grid_w = call.host<int32_t>("gridW", p.batch);
  const int32_t* rects = call.host<int32_t>("rects", 4 * R);
  int64_t grid_cells = 0;  // cells of posGrid the rects reach
  for (int64_t j = 0; j < R; ++j) {
    const int32_t image = rects[4 * j], row = rects[4 * j + 1], col = rects[4 * j + 2], size = rects[4 * j + 3];
    // The kernel writes rect j to row j + (image + 1) * prefix: the rects must come in image order,
    // offsets[b + 1] - offsets[b] - prefix of them for image b.
    const int64_t out_row = j + int64_t(image + 1) * p.prefix;
    if (image < 0 || image >= p.batch || out_row < offsets[image] + p.prefix || out_row >= offsets[image + 1] ||
        row < 0 || col < 0 || size < 1 || grid_offset[image] < 0 || col + size > grid_w[image])
      call.fail_range("rect " + std::to_string(j) + " does not fit the offsets or its image's grid");
    grid_cells = std::max(grid_cells, grid_offset[image] + (int64_t(row) + size - 1) * grid_w[image] + col + size);
  }
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.grid_offset = call.array<int32_t>("gridOffset", p.batch, Use::kIn);
  p.grid_w = call.array<int32_t>("gridW", p.batch, Use::kIn);
  p.rects = reinterpret_cast<const step::TokenRect*>(call.array<int32_t>("rects", 4 * R, Use::kIn));
  p.prefix_tokens = call.array<float>("prefixTokens", p.prefix * C, p.prefix ? Use::kIn : Use::kOptionalIn);
  p.pos_prefix = call.array<float>("posPrefix", p.prefix * C, Use::kOptionalIn);
  p.pos_grid = call.array<float>("posGrid", grid_cells * C, Use::kIn);
  p.embedded = call.array<float>("embedded", R * C, Use::kIn);
  p.out = call.array<float>("out", A * C, Use::kOut);
  x.rows_bound = call.integer_or("rowsBound", int(A));
  return [p, x](void* stream) { cuda::token_pos_embed(p, x, stream); };
}

// ---- token merging, early exits, upsample, conv ----------------------------------------------------

// Checked offsets (B + 1) of a packed list on the host: starts at 0, never decreases; returns the
// largest T (and A through *rows).
int check_offsets(const Call& call, const int32_t* offsets, int batch, int64_t* rows) {
  if (offsets[0] != 0) call.fail_range("offsets[0] must be 0");
  int max_t = 0;
  for (int b = 0; b < batch; ++b) {
    if (offsets[b + 1] < offsets[b]) call.fail_range("offsets must not decrease");
    max_t = std::max(max_t, offsets[b + 1] - offsets[b]);
  }
  *rows = offsets[batch];
  return max_t;
}

// Window sides (levels), each >= 1; returns the number of scores of all levels on a gh x gw grid.
int64_t check_levels(const Call& call, int levels, int gh, int gw) {
  const int32_t* sizes = call.host<int32_t>("sizes", levels);
  int64_t n = 0;
  for (int l = 0; l < levels; ++l) {
    if (sizes[l] < 1) call.fail_range("sizes[" + std::to_string(l) + "] must be >= 1");
    n += int64_t(gh / sizes[l]) * (gw / sizes[l]);
  }
  return n;
}

Launch prepare_window_score(Call& call) {
  step::WindowScoreParams p;
  p.h = call.integer("h", 1), p.w = call.integer("w", 1), p.channels = call.integer_or("channels", 3, 3);
  p.patch = call.integer("patch", 1), p.gh = call.integer("gh", 1), p.gw = call.integer("gw", 1);
  p.levels = call.integer("levels");
  p.color_tau = call.number("colorTau"), p.texture_tau = call.number("textureTau");
  if (int64_t(p.gh) * p.patch < p.h || int64_t(p.gw) * p.patch < p.w) call.fail_range("gh x gw patches must cover h x w");
  const int64_t scores = check_levels(call, p.levels, p.gh, p.gw);
  p.image = call.array<uint8_t>("image", int64_t(p.h) * p.w * p.channels, Use::kIn);
  p.sizes = call.array<int32_t>("sizes", p.levels, Use::kIn);
  p.scores = call.array<float>("scores", scores, Use::kOut);
  auto workspace = std::make_shared<cuda::DeviceBuffer>(
      size_t(cuda::window_score_workspace_floats(p.gh, p.gw)) * sizeof(float));
  cuda::WindowScoreDeviceExtras x;
  x.workspace = static_cast<float*>(workspace->data());
  return [p, x, workspace](void* stream) { cuda::window_score(p, x, stream); };
}

Launch prepare_superpatch_select(Call& call) {
  step::SuperpatchSelectParams p;
  p.image = call.integer_or("image", 0), p.gh = call.integer("gh", 1), p.gw = call.integer("gw", 1);
  p.levels = call.integer("levels");
  const int64_t scores = check_levels(call, p.levels, p.gh, p.gw), cells = int64_t(p.gh) * p.gw;
  p.sizes = call.array<int32_t>("sizes", p.levels, Use::kIn);
  p.thresholds = call.array<float>("thresholds", p.levels, Use::kIn);
  p.scores = call.array<float>("scores", scores, Use::kIn);
  p.rects = reinterpret_cast<step::TokenRect*>(call.array<int32_t>("rects", 4 * cells, Use::kOut));
  p.count = call.array<int32_t>("count", 1, Use::kOut);
  p.token_of_patch = call.array<int32_t>("tokenOfPatch", cells, Use::kOut);
  return [p](void* stream) { cuda::superpatch_select(p, stream); };
}

// Checks that `tokens` rects fit their images' grids (gridOffset, gridW and, when `rows`, gridH);
// returns the cells of the grids they reach (all of them with gridH).
int64_t check_rects(Call& call, int64_t tokens, bool rows) {
  const int64_t images = call.length<int32_t>("gridOffset");
  const int32_t* grid_offset = call.host<int32_t>("gridOffset", 0);
  const int32_t* grid_w = call.host<int32_t>("gridW", images);
  const int32_t* grid_h = rows ? call.host<int32_t>("gridH", images) : nullptr;
  const int32_t* rects = call.host<int32_t>("rects", 4 * tokens);
  int64_t cells = 0;
  for (int64_t b = 0; grid_h && b < images; ++b) cells = std::max(cells, grid_offset[b] + int64_t(grid_h[b]) * grid_w[b]);
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t image = rects[4 * t], row = rects[4 * t + 1], col = rects[4 * t + 2], size = rects[4 * t + 3];
    if (image < 0 || image >= images || row < 0 || col < 0 || size < 1 || grid_offset[image] < 0 ||
        int64_t(col) + size > grid_w[image] || (grid_h && int64_t(row) + size > grid_h[image]))
      call.fail_range("rect " + std::to_string(t) + " does not fit its image's grid");
    cells = std::max(cells, grid_offset[image] + (int64_t(row) + size - 1) * grid_w[image] + col + size);
  }
  return cells;
}

Launch prepare_unshare(Call& call) {
  step::UnshareParams p;
  p.K = call.integer("K", 1), p.tokens = call.integer("tokens");
  const std::string mode = call.string_or("mode", "");
  if (mode != "copy" && mode != "blend") call.fail_type("'copy' or 'blend'", "mode");
  p.mode = mode == "blend" ? step::UnshareMode::kBlend : step::UnshareMode::kCopy;
  const bool blend = p.mode == step::UnshareMode::kBlend;
  const int64_t images = call.length<int32_t>("gridOffset");
  const int64_t cells = check_rects(call, p.tokens, blend);  // cells of grid the rects reach
  p.rects = reinterpret_cast<const step::TokenRect*>(call.array<int32_t>("rects", 4 * int64_t(p.tokens), Use::kIn));
  p.logits = call.array<float>("logits", int64_t(p.tokens) * p.K, Use::kIn);
  p.grid_offset = call.array<int32_t>("gridOffset", images, Use::kIn);
  p.grid_w = call.array<int32_t>("gridW", images, Use::kIn);
  p.grid = call.array<float>("grid", cells * p.K, Use::kOut);
  if (blend) {
    p.grid_h = call.array<int32_t>("gridH", images, Use::kIn);
    p.flat = call.array<float>("flat", cells * p.K, Use::kOut);
  }
  cuda::UnshareDeviceExtras x;
  x.tokens_device = call.device_count("tokensDevice");
  return [p, x](void* stream) { cuda::unshare(p, x, stream); };
}

Launch prepare_token_halt(Call& call) {
  step::TokenHaltParams p;
  cuda::TokenHaltDeviceExtras x;
  p.batch = call.integer("batch"), p.K = call.integer("K", 1), p.prefix = call.integer_or("prefix", 0);
  p.threshold = call.number("threshold"), p.top_k = call.integer("topK");
  int64_t A = 0;
  const int max_t = check_offsets(call, call.host<int32_t>("offsets", int64_t(p.batch) + 1), p.batch, &A);
  x.max_seqlen = call.integer_or("maxSeqlen", max_t);
  if (x.max_seqlen > cuda::token_halt_max_rows())
    call.fail_range("maxSeqlen " + std::to_string(x.max_seqlen) + " is above token_halt_max_rows() = " +
                    std::to_string(cuda::token_halt_max_rows()));
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.logits = call.array<float>("logits", A * p.K, Use::kIn);
  p.halt = call.array<uint8_t>("halt", A, Use::kOut);
  if (call.has("cellLabel")) {  // agreement: rectOfRow, rects, gridOffset, gridH, gridW, cellLabel
    const int64_t images = call.length<int32_t>("gridOffset"), tokens = call.length<int32_t>("rects") / 4;
    const int64_t cells = check_rects(call, tokens, true);
    const int32_t* rect_of_row = call.host<int32_t>("rectOfRow", A);
    for (int64_t r = 0; r < A; ++r)
      if (rect_of_row[r] < -1 || rect_of_row[r] >= tokens) call.fail_range("rectOfRow[" + std::to_string(r) + "] is not a rect");
    p.rect_of_row = call.array<int32_t>("rectOfRow", A, Use::kIn);
    p.rects = reinterpret_cast<const step::TokenRect*>(call.array<int32_t>("rects", 4 * tokens, Use::kIn));
    p.grid_offset = call.array<int32_t>("gridOffset", images, Use::kIn);
    p.grid_h = call.array<int32_t>("gridH", images, Use::kIn), p.grid_w = call.array<int32_t>("gridW", images, Use::kIn);
    p.cell_label = call.array<int32_t>("cellLabel", cells, Use::kOut);
  }
  return [p, x](void* stream) { cuda::token_halt(p, x, stream); };
}

Launch prepare_token_compact(Call& call) {
  step::TokenCompactParams p;
  cuda::TokenCompactDeviceExtras x;
  p.batch = call.integer("batch"), p.C = call.integer("C", 1);
  int64_t A = 0;
  check_offsets(call, call.host<int32_t>("offsets", int64_t(p.batch) + 1), p.batch, &A);
  const uint8_t* halt = call.host<uint8_t>("halt", A);
  int64_t kept = 0;
  for (int64_t r = 0; r < A; ++r) kept += halt[r] ? 0 : 1;
  x.rows_bound = call.integer_or("rowsBound", int(A));
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.halt = call.array<uint8_t>("halt", A, Use::kIn);
  p.x = call.array<float>("x", A * p.C, Use::kIn);
  p.out = call.array<float>("out", kept * p.C, Use::kOut);
  p.new_offsets = call.array<int32_t>("newOffsets", int64_t(p.batch) + 1, Use::kOut);
  p.src_row = call.array<int32_t>("srcRow", kept, Use::kOut);
  return [p, x](void* stream) { cuda::token_compact(p, x, stream); };
}

Launch prepare_token_scatter(Call& call) {
  step::TokenScatterParams p;
  p.rows = call.integer("rows"), p.K = call.integer("K", 1);
  const int64_t table_rows = call.length<float>("table") / p.K;
  const int32_t* index = call.host<int32_t>("index", p.rows);
  for (int r = 0; r < p.rows; ++r)
    if (index[r] >= table_rows)
      call.fail_range("index[" + std::to_string(r) + "] = " + std::to_string(index[r]) + " is not a row of table (" +
                      std::to_string(table_rows) + " rows)");
  p.src = call.array<float>("src", int64_t(p.rows) * p.K, Use::kIn);
  p.index = call.array<int32_t>("index", p.rows, Use::kIn);
  p.mask = call.array<uint8_t>("mask", p.rows, Use::kOptionalIn);
  p.table = call.array<float>("table", table_rows * p.K, Use::kOut);
  cuda::TokenScatterDeviceExtras x;
  x.rows_device = call.device_count("rowsDevice");
  return [p, x](void* stream) { cuda::token_scatter(p, x, stream); };
}

Launch prepare_upsample(Call& call) {
  step::UpsampleParams p;
  p.K = call.integer("K", 1), p.gh = call.integer("gh", 1), p.gw = call.integer("gw", 1);
  p.patch = call.integer("patch", 1);
  p.valid_h = call.integer("validH", 1), p.valid_w = call.integer("validW", 1);
  p.out_h = call.integer("outH"), p.out_w = call.integer("outW");
  const int64_t pixels = int64_t(p.out_h) * p.out_w;
  p.logits = call.array<float>("logits", int64_t(p.gh) * p.gw * p.K, Use::kIn);
  p.labels = call.array<int32_t>("labels", pixels, Use::kOut);
  p.probs = call.array<float>("probs", pixels * p.K, Use::kOptionalOut);
  return [p](void* stream) { cuda::upsample(p, stream); };
}

// Shared by the CUDA op and its CPU reference (cpuConv).
step::ConvParams read_conv(Call& call) {
  step::ConvParams p;
  p.batch = call.integer("batch"), p.in_h = call.integer("inH", 1), p.in_w = call.integer("inW", 1);
  p.in_c = call.integer("inC", 1), p.out_c = call.integer("outC", 1);
  p.kernel = call.integer("kernel", 1), p.stride = call.integer("stride", 1), p.pad = call.integer("pad");
  p.groups = call.integer_or("groups", 1, 1);
  const std::string act = call.string_or("act", "none");
  if (act == "relu6") p.act = step::Activation::kRelu6;
  else if (act != "none") call.fail_type("one of 'none', 'relu6'", "act");
  if (p.in_h + 2 * p.pad < p.kernel || p.in_w + 2 * p.pad < p.kernel) call.fail_range("kernel larger than the padded map");
  p.out_h = (p.in_h + 2 * p.pad - p.kernel) / p.stride + 1, p.out_w = (p.in_w + 2 * p.pad - p.kernel) / p.stride + 1;
  const bool depthwise = p.groups == p.in_c && p.out_c == p.in_c;
  if (p.groups != 1 && !depthwise) call.fail_range("groups must be 1 or inC = outC (depthwise)");
  const int64_t w_elems = int64_t(p.out_c) * (p.in_c / p.groups) * p.kernel * p.kernel;
  p.x = call.array<float>("x", int64_t(p.batch) * p.in_h * p.in_w * p.in_c, Use::kIn);
  p.w = call.array<float>("w", w_elems, Use::kIn);
  p.bias = call.array<float>("bias", p.out_c, Use::kOptionalIn);
  p.y = call.array<float>("y", int64_t(p.batch) * p.out_h * p.out_w * p.out_c, Use::kOut);
  return p;
}

Launch prepare_conv(Call& call) {
  const step::ConvParams p = read_conv(call);
  return [p](void* stream) { cuda::conv(p, stream); };
}

Launch prepare_avg_pool(Call& call) {
  step::AvgPoolParams p;
  p.in_h = call.integer("inH"), p.in_w = call.integer("inW"), p.C = call.integer("C", 1);
  p.factor = call.integer("factor", 1);
  p.out_h = call.integer_or("outH", p.in_h / p.factor), p.out_w = call.integer_or("outW", p.in_w / p.factor);
  if (int64_t(p.out_h) * p.factor > p.in_h || int64_t(p.out_w) * p.factor > p.in_w)
    call.fail_range("outH x outW blocks of factor x factor must fit in inH x inW");
  p.x = call.array<float>("x", int64_t(p.in_h) * p.in_w * p.C, Use::kIn);
  p.y = call.array<float>("y", int64_t(p.out_h) * p.out_w * p.C, Use::kOut);
  return [p](void* stream) { cuda::avg_pool(p, stream); };
}

struct OpEntry {
  const char* name;
  Launch (*prepare)(Call&);
};
constexpr OpEntry kOps[] = {
    {"gemm", prepare_gemm},
    {"attention", prepare_attention},
    {"layernorm", prepare_layernorm},
    {"convertToBf16", prepare_convert_to_bf16},
    {"imageNormalize", prepare_image_normalize},
    {"patchGather", prepare_patch_gather},
    {"tokenPosEmbed", prepare_token_pos_embed},
    {"windowScore", prepare_window_score},
    {"superpatchSelect", prepare_superpatch_select},
    {"unshare", prepare_unshare},
    {"tokenHalt", prepare_token_halt},
    {"tokenCompact", prepare_token_compact},
    {"tokenScatter", prepare_token_scatter},
    {"upsample", prepare_upsample},
    {"conv", prepare_conv},
    {"avgPool", prepare_avg_pool},
};

// ---- exports --------------------------------------------------------------------------------------

using step::addon::guarded;

// cudaOps.<name>(params): info.Data() is the op's OpEntry.
Napi::Value run_op(const Napi::CallbackInfo& info) {
  const OpEntry& op = *static_cast<const OpEntry*>(info.Data());
  return guarded(info.Env(), [&]() -> Napi::Value {
    Call call(info[0], op.name, true);
    const Launch launch = op.prepare(call);
    launch(nullptr);
    cuda::device_synchronize();
    call.download();
    return info.Env().Undefined();
  });
}

// cudaOps.time(name, params, iterations) -> median ms.
Napi::Value time_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  const OpEntry* op = nullptr;
  std::string known;
  for (const OpEntry& e : kOps) {
    if (name == e.name) op = &e;
    known += (known.empty() ? "'" : ", '") + std::string(e.name) + "'";
  }
  if (!op) throw Napi::TypeError::New(env, "cudaOps.time: expected one of " + known + " for name but received " + describe(info[0]));
  const double iterations = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : NAN;
  if (!(iterations >= 1 && iterations <= 100000 && iterations == std::floor(iterations)))
    throw Napi::TypeError::New(env, "cudaOps.time: expected an integer in 1..100000 for iterations but received " +
                                        describe(info[2]));
  return guarded(env, [&]() -> Napi::Value {
    Call call(info[1], op->name, true);
    const Launch launch = op->prepare(call);
    return Napi::Number::New(env, cuda::time_median_ms(launch, int(iterations), 2));
  });
}

// cudaOps.cpuImageNormalize(params): the CPU reference, same params as cudaOps.imageNormalize (plus
// `channelsLast`).
Napi::Value cpu_image_normalize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Call call(info[0], "cpuImageNormalize", false);
    step::cpu::image_normalize(read_image_normalize(call, true));
    return info.Env().Undefined();
  });
}

// Integer argument i of a choose* function, at least min.
int int_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* what, int min) {
  const double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= min && d <= 2147483647.0 && d == std::floor(d)))
    throw Napi::TypeError::New(info.Env(), std::string("cudaOps.") + fn + ": expected an integer >= " +
                                               std::to_string(min) + " for " + what + " but received " + describe(info[i]));
  return int(d);
}
bool aligned_arg(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() <= i || info[i].IsUndefined() || info[i].ToBoolean().Value();
}

Napi::Value choose_gemm(const Napi::CallbackInfo& info) {
  const int M = int_arg(info, 0, "chooseGemm", "M", 0), N = int_arg(info, 1, "chooseGemm", "N", 0);
  const int K = int_arg(info, 2, "chooseGemm", "K", 0);
  return Napi::String::New(info.Env(), cuda::gemm_kernel_name(cuda::choose_gemm_kernel(M, N, K, aligned_arg(info, 3))));
}

Napi::Value choose_attention(const Napi::CallbackInfo& info) {
  const int D = int_arg(info, 0, "chooseAttention", "D", 1);
  return Napi::String::New(info.Env(), cuda::attention_kernel_name(cuda::choose_attention_kernel(D, aligned_arg(info, 1))));
}

Napi::Value choose_layernorm(const Napi::CallbackInfo& info) {
  const int C = int_arg(info, 0, "chooseLayernorm", "C", 1);
  return Napi::String::New(info.Env(), layernorm_kernel_name(cuda::choose_layernorm_kernel(C, aligned_arg(info, 1))));
}

// memoryInfo() -> { free, total } bytes of GPU 0 ({0, 0} without a usable GPU): the dispose test and
// the benchmark measure what a model holds with it.
Napi::Value memory_info(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const cuda::DeviceMemoryInfo m = cuda::device_memory_info();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("free", double(m.free)), o.Set("total", double(m.total));
    return o;
  });
}

}  // namespace

// Called by addon.cpp's init when the CUDA backend is compiled in: sets exports.cudaOps.
void register_cuda_ops(Napi::Env env, Napi::Object exports) {
  Napi::Object ops = Napi::Object::New(env);
  for (const OpEntry& op : kOps)
    ops.Set(op.name, Napi::Function::New(env, run_op, op.name, const_cast<OpEntry*>(&op)));
  ops.Set("time", Napi::Function::New(env, time_op, "time"));
  ops.Set("chooseGemm", Napi::Function::New(env, choose_gemm, "chooseGemm"));
  ops.Set("chooseAttention", Napi::Function::New(env, choose_attention, "chooseAttention"));
  ops.Set("chooseLayernorm", Napi::Function::New(env, choose_layernorm, "chooseLayernorm"));
  ops.Set("cpuImageNormalize", Napi::Function::New(env, cpu_image_normalize, "cpuImageNormalize"));
  ops.Set("memoryInfo", Napi::Function::New(env, memory_info, "memoryInfo"));
  exports.Set("cudaOps", ops);
}
