// addon.cpp: the N-API surface of step-seg; the only file that includes napi.h.
// JavaScript validates, C++ computes (lib/ checks options and builds the weight index): values are
// copied out of JS on the main thread, Execute() runs the engine on a libuv worker thread and never
// touches JS, and results become typed arrays back on the main thread. Every job returns a Promise;
// engine errors reject with an Error whose `code` is the step::ErrorCode name (lib/errors.ts maps it
// to a class). Exports: createModel, probeCuda, cpuInfo, setNumThreads, and `ops` (single ops, sync,
// for the op tests).
#include <napi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "../core/device.h"
#include "../core/file_map.h"
#include "../core/effnet.h"
#include "../core/merge.h"
#include "../core/model.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/parallel.h"

void register_cpu_ops(Napi::Env env, Napi::Object exports);  // ops_binding.cpp: exports.ops (op tests)
#ifdef STEP_SEG_HAVE_CUDA
#include "../cuda/device_model.h"
void register_cuda_ops(Napi::Env env, Napi::Object exports);  // cuda_binding.cpp: exports.cudaOps (tests, bench)
#endif
#ifdef STEP_SEG_CUDA_EMU
void register_emu_ops(Napi::Env env, Napi::Object exports);  // emu_binding.cpp: exports.emuOps (emulator tests)
#endif

namespace {

using step::Error;
using step::ErrorCode;

// One CPU backend per precision (a bf16 request on a CPU without a bfloat16 kernel gets the float32
// one: CpuBackend::precision() says which runs).
step::cpu::CpuBackend& cpu_backend(step::Precision precision = step::Precision::kFp32) {
  static step::cpu::CpuBackend fp32(step::Precision::kFp32), bf16(step::Precision::kBf16);
  return precision == step::Precision::kBf16 ? bf16 : fp32;
}

// ---- reading JS values ---------------------------------------------------------------------------
// lib/ checks every value against the engine's limits (lib/limits.ts) before it comes here; these
// checks keep a value that slipped past from being truncated or wrapped: a coded BadInput error.
[[noreturn]] void throw_bad_input(Napi::Env env, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, step::error_code_name(ErrorCode::kBadInput)));
  throw err;
}
int to_int(const Napi::Value& v, const std::string& what, double min = -2147483648.0, double max = 2147483647.0) {
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
int get_int(const Napi::Object& o, const char* key) { return to_int(o.Get(key), key); }
double get_double(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("expected a number for ") + key);
  return v.As<Napi::Number>().DoubleValue();
}
bool get_bool(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsBoolean() && v.As<Napi::Boolean>().Value();
}
template <typename T>
std::vector<T> get_vector(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string("expected a typed array for ") + what);
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.ElementSize() != sizeof(T))
    throw Napi::TypeError::New(v.Env(), std::string("wrong element type for ") + what);
  const T* p = reinterpret_cast<const T*>(static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  return std::vector<T>(p, p + ta.ElementLength());
}
void free_external(napi_env, void* data, void*) { std::free(data); }

// A Float32Array copy of n floats. The memory comes from malloc, so that running out of it is a coded
// OutOfMemory error rather than V8's fatal "ArrayBuffer allocation failed" (external buffers are not
// allowed everywhere, e.g. Electron: there V8 allocates).
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

Napi::Object stats_to_js(Napi::Env env, const step::ForwardStats& s) {
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
  Napi::Object ms = Napi::Object::New(env);
  for (const auto& [name, v] : s.ms) ms.Set(name, v);
  o.Set("ms", ms);
  return o;
}

// ---- jobs ----------------------------------------------------------------------------------------
// An AsyncWorker that settles a Promise and carries the engine's error code to JS. Completion runs in
// the environment that queued the job; when that environment is being torn down (a Worker exiting,
// or terminated mid-call) nobody waits for the Promise and settling it fails: that is swallowed
// instead of escaping as a C++ exception (which would abort the process).
class Job : public Napi::AsyncWorker {
 public:
  explicit Job(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void run() = 0;                        // worker thread
  virtual Napi::Value result(Napi::Env env) = 0; // main thread
  void fail(ErrorCode code, const std::string& message) {
    code_ = code;
    message_ = message;
    failed_ = true;
  }

 private:
  void Execute() final {
    try {
      run();
    } catch (const Error& e) {
      fail(e.code(), e.what());
    } catch (const std::bad_alloc&) {
      fail(ErrorCode::kOutOfMemory, "out of memory while running the model: try a smaller input size or batch");
    } catch (const std::exception& e) {
      fail(ErrorCode::kInternal, std::string("internal error: ") + e.what());
    }
  }
  void reject(Napi::Env env, ErrorCode code, const std::string& message) {
    Napi::Error err = Napi::Error::New(env, message);
    err.Set("code", Napi::String::New(env, step::error_code_name(code)));
    deferred_.Reject(err.Value());
  }
  void settle(Napi::Env env) {
    if (failed_) return reject(env, code_, message_);
    try {
      deferred_.Resolve(result(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::bad_alloc&) {
      reject(env, ErrorCode::kOutOfMemory, "out of memory while returning the results");
    } catch (const Error& e) {
      reject(env, e.code(), e.what());
    } catch (const std::exception& e) {
      reject(env, ErrorCode::kInternal, std::string("internal error: ") + e.what());
    }
  }
  void OnWorkComplete(Napi::Env env, napi_status status) final {
    if (status != napi_cancelled) {
      try {
        Napi::HandleScope scope(env);
        settle(env);
      } catch (...) {
        // the environment is shutting down: the Promise has no one to settle for
      }
    }
    Destroy();
  }

  Napi::Promise::Deferred deferred_;
  bool failed_ = false;
  ErrorCode code_ = ErrorCode::kInternal;
  std::string message_;
};

// What a NativeModel owns; jobs share it, so dispose() during a run frees it when the run ends.
struct ModelState {
  std::unique_ptr<step::VitModel> model;     // a ViT segmentation model, or
  std::unique_ptr<step::EffNetTrunk> trunk;  // a bare EfficientNet-Lite0 trunk (features only)
#ifdef STEP_SEG_HAVE_CUDA
  std::unique_ptr<step::cuda::DeviceModel> gpu;  // the model's GPU copy when it runs on 'cuda' (after model:
                                                 // destroyed first, it reads model's host tensors)
#endif
  std::mutex run_mutex;  // one forward at a time per model (lib/ queues calls too)
  step::cpu::CpuBackend* cpu = &cpu_backend();  // the CPU backend of the model's precision

  // The encoder forward on the model's device.
  step::EncoderOutput forward(const step::EncoderInput& in) {
#ifdef STEP_SEG_HAVE_CUDA
    if (gpu) return gpu->forward(in);
#endif
    return model->forward(*cpu, in);
  }
};

// Per-environment state (the main thread and every worker_threads Worker that loads the addon each
// have their own): JS handles never outlive or cross the environment that made them, so no static
// holds one. Freed by Node when the environment is torn down (a Worker exits).
// Memory that calls in flight have reserved (lib/memory.ts), process-wide: every environment's calls
// count against the one budget. Each environment also keeps its own share, given back when it is torn
// down (a Worker terminated mid-call never releases its reservations itself).
std::atomic<int64_t> g_reserved{0};

struct AddonData {
  Napi::FunctionReference model_ctor;  // NativeModel, for results of createModel
  int64_t reserved = 0;                // this environment's share of g_reserved (main thread only)
  ~AddonData() { g_reserved -= reserved; }
};

AddonData& addon_data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) throw Napi::Error::New(env, "step-seg: the addon is not initialised in this environment");
  return *d;
}

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("forwardFeatures", &NativeModel::forward_features),
                        InstanceMethod("segment", &NativeModel::segment),
                        InstanceMethod("dispose", &NativeModel::dispose),
                        InstanceMethod("cacheInfo", &NativeModel::cache_info)});
  }
  explicit NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}
  std::shared_ptr<ModelState> state;

 private:
  std::shared_ptr<ModelState> live(Napi::Env env) {
    if (!state) {
      Napi::Error err = Napi::Error::New(env, "the model has been disposed");
      err.Set("code", Napi::String::New(env, step::error_code_name(ErrorCode::kDisposed)));
      throw err;
    }
    return state;
  }
  Napi::Value forward_features(const Napi::CallbackInfo& info);
  Napi::Value segment(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info) {
    state.reset();
    return info.Env().Undefined();
  }
  // cacheInfo() -> { posEntries, posBytes, posLimit }: the position-embedding cache (tests, diagnostics)
  Napi::Value cache_info(const Napi::CallbackInfo& info) {
    auto s = live(info.Env());
    Napi::Object o = Napi::Object::New(info.Env());
    if (s->model) {
      const step::VitModel::PosCacheInfo c = s->model->pos_cache_info();
      o.Set("posEntries", double(c.entries)), o.Set("posBytes", double(c.bytes)), o.Set("posLimit", double(c.limit));
    }
    return o;
  }
};

// createModel(config, tensors, source, dataOffset, device): source is a path or a Buffer; device 'cpu' or
// 'cuda' (uploads the weights to the GPU; rejects with the reason when it cannot).
class CreateModelJob : public Job {
 public:
  CreateModelJob(Napi::Env env, bool effnet, step::VitConfig cfg, std::vector<step::TensorEntry> entries, std::string path,
                 Napi::Buffer<uint8_t> buffer, uint64_t data_offset, bool cuda, std::vector<uint8_t> header, uint64_t file_size,
                 step::Precision precision)
      : Job(env), effnet_(effnet), cfg_(cfg), entries_(std::move(entries)), path_(std::move(path)), data_offset_(data_offset),
        cuda_(cuda), header_(std::move(header)), file_size_(file_size), precision_(precision) {
    if (!buffer.IsEmpty()) {
      buffer_ref_ = Napi::Persistent(buffer.As<Napi::Object>());  // keeps the bytes alive until the job ends
      buffer_data_ = buffer.Data();
      buffer_size_ = buffer.Length();
    }
  }

 protected:
  void run() override {
    // A file is read (pread) into memory owned here, never mapped: another process that truncates or
    // rewrites it meanwhile makes this a BadModel error ("changed while it was loading"), not SIGBUS.
    std::unique_ptr<step::FileSource> file;
    std::unique_ptr<step::MemorySource> memory;
    const step::ByteSource* src;
    if (!path_.empty()) {
      file = std::make_unique<step::FileSource>(path_, data_offset_);
      if (!header_.empty()) file->expect_prefix(header_.data(), header_.size(), file_size_);
      src = file.get();
    } else {
      if (data_offset_ > buffer_size_)
        throw Error(ErrorCode::kBadModel, "the weights file is shorter than its own header: it is truncated");
      memory = std::make_unique<step::MemorySource>(buffer_data_ + data_offset_, buffer_size_ - data_offset_);
      src = memory.get();
    }
    state_ = std::make_shared<ModelState>();
    state_->cpu = &cpu_backend(precision_);
    if (effnet_)
      state_->trunk = std::make_unique<step::EffNetTrunk>(step::EffNetConfig{}, step::load_effnet_weights("", *src, entries_, {}));
    else
      state_->model = step::load_vit_model(cfg_, *src, entries_);
    if (file) file->expect_unchanged();  // every byte was read after the open: the same file throughout
    if (!cuda_) return;
#ifdef STEP_SEG_HAVE_CUDA
    if (!state_->model)
      throw Error(ErrorCode::kDeviceUnavailable, "a bare EfficientNet-Lite0 trunk runs on the CPU only: use device 'cpu'");
    state_->gpu = step::cuda::DeviceModel::create(*state_->model, cpu_backend());  // the host side: float32
#else
    throw Error(ErrorCode::kDeviceUnavailable, "this build of step-seg has no CUDA backend");
#endif
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Object obj = addon_data(env).model_ctor.New({});
    NativeModel::Unwrap(obj)->state = state_;
    // what the CPU side runs: bf16 only where it was asked for and this CPU has a bfloat16 kernel
    obj.Set("precision", state_->cpu->precision() == step::Precision::kBf16 ? "bf16" : "fp32");
    return obj;
  }

 private:
  bool effnet_;
  step::VitConfig cfg_;
  std::vector<step::TensorEntry> entries_;
  std::string path_;
  Napi::ObjectReference buffer_ref_;
  const uint8_t* buffer_data_ = nullptr;
  size_t buffer_size_ = 0;
  uint64_t data_offset_;
  bool cuda_;
  std::vector<uint8_t> header_;  // the file's first bytes as lib/ parsed them (path sources)
  uint64_t file_size_;
  step::Precision precision_;
  std::shared_ptr<ModelState> state_;
};

Napi::Value create_model(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object c = info[0].As<Napi::Object>();
  step::VitConfig cfg;
  const bool effnet = c.Get("arch").ToString().Utf8Value() == "efficientnet_lite0";
  if (!effnet) {
  // the same limits as lib/limits.ts
  cfg.patch = to_int(c.Get("patchSize"), "patchSize", 1, 256), cfg.embed_dim = to_int(c.Get("embedDim"), "embedDim", 1, 16384);
  cfg.depth = to_int(c.Get("depth"), "depth", 1, 255);
  cfg.heads = to_int(c.Get("numHeads"), "numHeads", 1, cfg.embed_dim), cfg.mlp_hidden = to_int(c.Get("mlpHidden"), "mlpHidden", 1, 131072);
  cfg.qkv_bias = get_bool(c, "qkvBias"), cfg.class_token = get_bool(c, "classToken");
  cfg.no_embed_class = get_bool(c, "noEmbedClass"), cfg.pre_norm = get_bool(c, "preNorm");
  cfg.layer_scale = get_bool(c, "layerScale"), cfg.reg_tokens = to_int(c.Get("regTokens"), "regTokens", 0, 256);
  cfg.norm_eps = float(get_double(c, "normEps"));
  cfg.grid_h = to_int(c.Get("gridH"), "gridH", 1, 32768), cfg.grid_w = to_int(c.Get("gridW"), "gridW", 1, 32768);
  cfg.num_classes = to_int(c.Get("numClasses"), "numClasses", 0, 65536);
  Napi::Array exits = to_array(c.Get("exitLayers"), "exitLayers");
  for (uint32_t i = 0; i < exits.Length(); ++i) cfg.exit_layers.push_back(to_int(exits.Get(i), "exitLayers[i]", 1, cfg.depth - 1));
  Napi::Array policy = to_array(c.Get("policyLevels"), "policyLevels");
  for (uint32_t i = 0; i < policy.Length(); ++i) cfg.policy_levels.push_back(to_int(policy.Get(i), "policyLevels[i]", 2, 64));
  cfg.policy_outputs = to_int(c.Get("policyOutputs"), "policyOutputs", 1, 2);
  }

  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<step::TensorEntry> entries;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    Napi::Object t = list.Get(i).As<Napi::Object>();
    step::TensorEntry e;
    e.name = t.Get("name").As<Napi::String>().Utf8Value();
    e.dtype = t.Get("dtype").As<Napi::String>().Utf8Value();
    Napi::Array shape = t.Get("shape").As<Napi::Array>();
    for (uint32_t d = 0; d < shape.Length(); ++d) e.shape.push_back(to_int64(shape.Get(d), "tensor shape"));
    e.begin = uint64_t(get_double(t, "begin")), e.end = uint64_t(get_double(t, "end"));
    entries.push_back(std::move(e));
  }
  std::string path;
  Napi::Buffer<uint8_t> buffer;
  if (info[2].IsString()) path = info[2].As<Napi::String>().Utf8Value();
  else if (info[2].IsBuffer()) buffer = info[2].As<Napi::Buffer<uint8_t>>();
  else throw_bad_input(env, "createModel: the source is a path or a Buffer");
  const bool cuda = info.Length() > 4 && info[4].IsString() && info[4].As<Napi::String>().Utf8Value() == "cuda";
  // optional: the bytes the header was parsed from and the file's size then (a path source is checked
  // against them: a file replaced between the two reads is refused)
  std::vector<uint8_t> header;
  uint64_t file_size = 0;
  if (info.Length() > 6 && info[5].IsTypedArray()) {
    header = get_vector<uint8_t>(info[5], "header");
    file_size = uint64_t(to_int64(info[6], "fileSize"));
  }
  // optional: 'bf16' or 'fp32' (default) for the CPU's GEMMs and attention
  const bool bf16 = info.Length() > 7 && info[7].IsString() && info[7].As<Napi::String>().Utf8Value() == "bf16";
  auto* job = new CreateModelJob(env, effnet, cfg, std::move(entries), path, buffer,
                                 uint64_t(to_int64(info[3], "dataOffset")), cuda, std::move(header), file_size,
                                 bf16 ? step::Precision::kBf16 : step::Precision::kFp32);
  job->Queue();
  return job->promise();
}

// forwardFeatures(pixels: Float32Array (N,3,H,W), dims, capture) -> { tokens, offsets, captured, stats }
class ForwardJob : public Job {
 public:
  ForwardJob(Napi::Env env, std::shared_ptr<ModelState> state, std::vector<float> pixels, int n, int h, int w,
             bool capture)
      : Job(env), state_(std::move(state)), pixels_(std::move(pixels)), n_(n), h_(h), w_(w), capture_(capture) {}

 protected:
  void run() override {
    try {
      run_model();
    } catch (const step::NonFiniteError& e) {
      // the inputs are finite (lib/ checks): either they are far outside the normalised range or the
      // weights are too large for float32
      float peak = 0.f;
      for (float v : pixels_) peak = std::max(peak, std::fabs(v));
      if (peak > 1e4f)
        throw Error(ErrorCode::kBadInput, std::string(e.what()) + ": pixels.data holds values as large as " + std::to_string(peak) +
                                              " (normalised pixels lie within about +-10)");
      throw Error(ErrorCode::kBadModel, std::string(e.what()) + " for pixels within +-" + std::to_string(peak) +
                                            ": the model's weights are too large for float32 (a huge weight, bias or scale)");
    }
  }
  void run_model() {
    std::lock_guard<std::mutex> lock(state_->run_mutex);
    if (state_->trunk) return run_trunk();
    const int P = state_->model->config().patch;
    step::EncoderInput in;
    in.images = n_, in.height = h_, in.width = w_, in.pixels = pixels_.data(), in.capture = capture_;
    in.grids.assign(n_, {h_ / P, w_ / P});
    in.unshare = step::UnshareMode::kCopy;  // dense: one rect per patch
    out_ = state_->forward(in);
  }
  // EfficientNet trunk: NCHW in, NHWC inside, the five stage maps back as NCHW (timm's layout).
  void run_trunk() {
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    const int64_t plane = int64_t(h_) * w_;
    step::Tensor x({n_, h_, w_, 3});
    for (int b = 0; b < n_; ++b)
      for (int64_t i = 0; i < plane; ++i)
        for (int c = 0; c < 3; ++c) x.data()[(b * plane + i) * 3 + c] = pixels_[(int64_t(b) * 3 + c) * plane + i];
    std::vector<step::Tensor> maps = state_->trunk->forward(*state_->cpu, x.data(), n_, h_, w_, &out_.stats.gflops);
    for (step::Tensor& m : maps) {
      const int64_t hh = m.dim(1), ww = m.dim(2), C = m.dim(3);
      step::Tensor nchw({n_, C, hh, ww});
      for (int b = 0; b < n_; ++b)
        for (int64_t i = 0; i < hh * ww; ++i)
          for (int64_t c = 0; c < C; ++c) nchw.data()[(b * C + c) * hh * ww + i] = m.data()[(b * hh * ww + i) * C + c];
      if (!step::all_finite(nchw.data(), nchw.numel())) throw step::NonFiniteError("stage maps of the EfficientNet trunk");
      stage_dims_.push_back({C, hh, ww});
      stages_.push_back(std::move(nchw));
    }
    out_.stats.ms.emplace_back("trunk", std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    if (!stages_.empty()) {
      Napi::Array stages = Napi::Array::New(env, stages_.size());
      for (size_t i = 0; i < stages_.size(); ++i) {
        Napi::Object st = Napi::Object::New(env);
        st.Set("data", to_js(env, stages_[i].data(), stages_[i].numel()));
        Napi::Array dims = Napi::Array::New(env, 4);
        dims.Set(0u, n_), dims.Set(1u, double(stage_dims_[i][0])), dims.Set(2u, double(stage_dims_[i][1]));
        dims.Set(3u, double(stage_dims_[i][2]));
        st.Set("dims", dims);
        stages.Set(uint32_t(i), st);
      }
      o.Set("stages", stages);
      o.Set("stats", stats_to_js(env, out_.stats));
      return o;
    }
    o.Set("tokens", to_js(env, out_.tokens.data(), out_.tokens.numel()));
    Napi::Object captured = Napi::Object::New(env);
    for (auto& [name, t] : out_.captured) captured.Set(name, to_js(env, t.data(), t.numel()));
    o.Set("captured", captured);
    o.Set("stats", stats_to_js(env, out_.stats));
    return o;
  }

 private:
  std::shared_ptr<ModelState> state_;
  std::vector<float> pixels_;
  int n_, h_, w_;
  bool capture_;
  step::EncoderOutput out_;
  std::vector<step::Tensor> stages_;
  std::vector<std::array<int64_t, 3>> stage_dims_;
};

Napi::Value NativeModel::forward_features(const Napi::CallbackInfo& info) {
  auto state = live(info.Env());
  std::vector<float> pixels = get_vector<float>(info[0], "pixels");
  Napi::Array dims = info[1].As<Napi::Array>();
  int n = to_int(dims.Get(0u), "dims[0]", 1, 4096), h = to_int(dims.Get(2u), "dims[2]", 1, 65536);
  int w = to_int(dims.Get(3u), "dims[3]", 1, 65536);
  if (pixels.size() != size_t(n) * 3 * h * w) throw_bad_input(info.Env(), "pixels do not match dims");
  auto* job = new ForwardJob(info.Env(), state, std::move(pixels), n, h, w, info[2].ToBoolean().Value());
  job->Queue();
  return job->promise();
}

// segment(images, options) -> Promise<[{ tokensPerSize, stats }]>
//   images: [{ data: Uint8Array (h, w, channels) resized image, width, height, channels, outWidth, outHeight,
//              labels: Uint8Array | Uint16Array (outHeight * outWidth), probs?: Float32Array (K * out pixels),
//              logits?: Float32Array (K * gh * gw), index: Int32Array, size: Uint8Array, exitLayer: Uint8Array
//              (gh * gw each: the token map) }]
//   options: { mean: [3], std: [3] (0..1 units), probs, logits, merge?, prune?, tile?: { size, stride } (pixels,
//              multiples of the patch size) }
// Every array is allocated by the caller (lib/model.ts, where a failed allocation is a catchable RangeError)
// and written here on the worker thread: nothing proportional to the image runs on the main thread. The
// arrays (and the image) are held by references until the job ends; the caller does not see them before.
// With `tile`, each image is run as overlapping tiles of size x size pixels at the given stride (the last
// tile of a row or column ends at the image's edge, as mmsegmentation's slide mode), one tile per forward,
// and the patch-grid logits of the tiles are averaged where they overlap before upsampling.
class SegmentJob : public Job {
 public:
  struct Image {
    const uint8_t* rgb = nullptr;  // (h, w, channels) resized image (held by refs)
    int w = 0, h = 0, channels = 3, out_w = 0, out_h = 0;
    uint8_t* labels8 = nullptr;
    uint16_t* labels16 = nullptr;
    float* probs = nullptr;   // (K, out_h, out_w) or null
    float* logits = nullptr;  // (K, gh, gw) or null
    int32_t* index = nullptr;
    uint8_t* size = nullptr;
    uint8_t* exit_layer = nullptr;
  };
  struct Tile {
    int size = 0, stride = 0;  // pixels, multiples of P; size 0: no tiling
  };
  SegmentJob(Napi::Env env, std::shared_ptr<ModelState> state, std::vector<Image> images, std::vector<Napi::ObjectReference> refs,
             float mean[3], float std[3], bool probs, bool logits, step::MergeSettings merge, step::PruneSettings prune, Tile tile)
      : Job(env), state_(std::move(state)), images_(std::move(images)), refs_(std::move(refs)), want_probs_(probs),
        want_logits_(logits), merge_(std::move(merge)), prune_(std::move(prune)), tile_(tile) {
    for (int c = 0; c < 3; ++c) mean_[c] = mean[c], std_[c] = std[c];
  }

 protected:
  void run() override {
    try {
      run_model();
    } catch (const step::NonFiniteError& e) {
      // images are uint8 and mean / std finite and positive (lib/ checks): the model is at fault
      throw Error(ErrorCode::kBadModel, std::string(e.what()) + " for this image: the model's weights (or its pixel_std) are too large for float32");
    }
  }

 private:
  using clock = std::chrono::steady_clock;
  static double ms_since(clock::time_point t0) { return std::chrono::duration<double, std::milli>(clock::now() - t0).count(); }

  // One image, or one tile of one: interleaved uint8 rows of w pixels.
  struct View {
    const uint8_t* rgb;
    int w, h, channels;
  };
  // One forward over a batch of views: normalising, merging, the encoder (on the model's device).
  struct Pass {
    step::EncoderOutput out;
    step::MergePlan plan;
    std::vector<std::pair<int, int>> grids;
    std::vector<int32_t> rect_start;  // (B + 1) first rect of each view in plan.rects
  };
  // Per image: what comes back besides the caller's arrays.
  struct Result {
    int gh = 0, gw = 0;
    step::Tensor grid;                     // (gh * gw, K) patch-grid logits (blended over tiles)
    std::vector<int64_t> tokens_per_size;  // per merge level, then 1 x 1
    int64_t dense = 0, input = 0;
    int tiles = 0;
  };

  Pass run_pass(const std::vector<View>& views) {
    step::VitModel& model = *state_->model;
    step::Backend& backend = *state_->cpu;
    const int P = model.config().patch, B = int(views.size());
    auto t0 = clock::now();
    Pass pass;
    step::EncoderInput in;
    in.images = B;
    for (const View& v : views) {
      const int gh = (v.h + P - 1) / P, gw = (v.w + P - 1) / P;
      in.grids.push_back({gh, gw});
      in.height = std::max(in.height, gh * P), in.width = std::max(in.width, gw * P);
    }
    pass.grids = in.grids;
    step::Tensor pixels({B, 3, in.height, in.width});  // (B, 3, H, W)
    for (int b = 0; b < B; ++b) {
      step::ImageNormalizeParams p;
      p.src = views[b].rgb, p.h = views[b].h, p.w = views[b].w, p.channels = views[b].channels;
      for (int c = 0; c < 3; ++c) p.mean[c] = 255.f * mean_[c], p.std[c] = 255.f * std_[c];
      p.out_h = in.height, p.out_w = in.width, p.out = pixels.data() + int64_t(b) * 3 * in.height * in.width;
      backend.image_normalize(p);
    }
    in.pixels = pixels.data();
    const double normalize_ms = ms_since(t0);
    std::vector<step::MergeImage> merge_images;
    for (int b = 0; b < B; ++b)
      merge_images.push_back({views[b].rgb, views[b].h, views[b].w, views[b].channels, in.grids[b].first, in.grids[b].second});
    pass.plan = step::plan_merge(backend, merge_images, P, merge_, model.policy());
    in.rects = pass.plan.rects;
    in.prune = prune_;
    in.unshare = merge_.unshare;
    in.want_tokens = false;
    pass.out = state_->forward(in);
    if (!step::all_finite(pass.out.grid_logits.data(), pass.out.grid_logits.numel()))
      throw step::NonFiniteError("patch-grid logits");
    pass.out.stats.ms.insert(pass.out.stats.ms.begin(),
                             {{"normalize", normalize_ms}, {"score", pass.plan.score_ms}, {"select", pass.plan.select_ms}});
    pass.out.stats.gflops += pass.plan.gflops;
    gflops_policy_ += pass.plan.gflops;
    index_rects(pass);
    return pass;
  }
  static void index_rects(Pass& pass) {
    const int B = int(pass.grids.size());
    pass.rect_start.assign(B + 1, 0);
    for (const step::TokenRect& r : pass.plan.rects) ++pass.rect_start[r.image + 1];
    for (int b = 0; b < B; ++b) pass.rect_start[b + 1] += pass.rect_start[b];
  }

  // Adds view b of `pass` to image `im`'s result at patch offset (oy, ox): token map entries (token
  // indices offset by `first_token`), token counts, and (with acc) its logits into the running sums.
  void file(const Pass& pass, int b, Result& r, const Image& im, int oy, int ox, int64_t first_token, float* acc, float* weight) {
    const int K = state_->model->config().num_classes, pre = state_->model->config().prefix();
    const auto [gh, gw] = pass.grids[b];
    const std::vector<int32_t>& map = pass.plan.token_of_patch[b];
    const int32_t first_rect = pass.rect_start[b];
    const step::TokenRect* rects = pass.plan.rects.data() + first_rect;
    const float* logits = acc ? pass.out.grid_logits.data() + int64_t(pass.out.grid_offset[b]) * K : nullptr;
    for (int i = 0; i < gh; ++i)
      for (int j = 0; j < gw; ++j) {
        const int64_t at = int64_t(oy + i) * r.gw + (ox + j), t = map[size_t(i) * gw + j];
        im.index[at] = int32_t(first_token + t);
        im.size[at] = uint8_t(rects[t].size);
        im.exit_layer[at] = uint8_t(pass.out.rect_exit[size_t(first_rect + t)]);
        if (acc) {
          const float* l = logits + (int64_t(i) * gw + j) * K;
          float* a = acc + at * K;
          for (int k = 0; k < K; ++k) a[k] += l[k];
          weight[at] += 1.f;
        }
      }
    const std::vector<int64_t>& per = pass.plan.tokens_per_size[b];
    if (r.tokens_per_size.size() < per.size()) r.tokens_per_size.resize(per.size(), 0);
    for (size_t l = 0; l < per.size(); ++l) r.tokens_per_size[l] += per[l];
    r.dense += int64_t(gh) * gw + pre;
    r.input += pre + (pass.rect_start[b + 1] - pass.rect_start[b]);
    r.tiles += 1;
  }

  // Sums the statistics of a pass into stats_ (stage times by name, counts per block and exit).
  void add_stats(const step::ForwardStats& s) {
    if (!have_stats_) {
      stats_ = s;
      have_stats_ = true;
      return;
    }
    stats_.dense_tokens += s.dense_tokens, stats_.input_tokens += s.input_tokens, stats_.gflops += s.gflops;
    for (size_t i = 0; i < s.per_block.size(); ++i) {
      if (i < stats_.per_block.size()) stats_.per_block[i] += s.per_block[i];
      else stats_.per_block.push_back(s.per_block[i]);
    }
    for (size_t i = 0; i < s.halted.size(); ++i) {
      if (i < stats_.halted.size()) stats_.halted[i] += s.halted[i];
      else stats_.halted.push_back(s.halted[i]);
    }
    for (const auto& [name, v] : s.ms) {
      auto it = std::find_if(stats_.ms.begin(), stats_.ms.end(), [&](const auto& e) { return e.first == name; });
      if (it != stats_.ms.end()) it->second += v;
      else stats_.ms.emplace_back(name, v);
    }
  }

  void run_model() {
    std::lock_guard<std::mutex> lock(state_->run_mutex);
    const int P = state_->model->config().patch, K = state_->model->config().num_classes, B = int(images_.size());
    results_.resize(B);
    for (int b = 0; b < B; ++b) {
      results_[b].gh = (images_[b].h + P - 1) / P, results_[b].gw = (images_[b].w + P - 1) / P;
      results_[b].grid.reset({int64_t(results_[b].gh) * results_[b].gw, K});
    }
#ifdef STEP_SEG_HAVE_CUDA
    if (state_->gpu && tile_.size == 0) return run_gpu();
#endif
    if (tile_.size == 0) {
      std::vector<View> views;
      for (const Image& im : images_) views.push_back({im.rgb, im.w, im.h, im.channels});
      Pass pass = run_pass(views);
      add_stats(pass.out.stats);
      for (int b = 0; b < B; ++b) {
        Result& r = results_[b];
        file(pass, b, r, images_[b], 0, 0, 0, nullptr, nullptr);
        std::memcpy(r.grid.data(), pass.out.grid_logits.data() + int64_t(pass.out.grid_offset[b]) * K, r.grid.numel() * sizeof(float));
      }
    } else {
      for (int b = 0; b < B; ++b) run_tiles(b);
    }
    auto t0 = clock::now();
    for (int b = 0; b < B; ++b) upsample(b);
    stats_.ms.emplace_back("upsample", ms_since(t0));
  }

  // Image b as overlapping tiles, one forward each, logits averaged over the overlaps.
  void run_tiles(int b) {
    const Image& im = images_[b];
    Result& r = results_[b];
    const int P = state_->model->config().patch, K = state_->model->config().num_classes;
    const int tg = tile_.size / P, sg = std::max(1, tile_.stride / P);
    // tile origins (in patches) along one axis: every sg patches, the last one flush with the end
    auto origins = [&](int g) {
      std::vector<int> o;
      if (g <= tg) return std::vector<int>{0};
      for (int at = 0;; at += sg) {
        if (at + tg >= g) {
          o.push_back(g - tg);
          break;
        }
        o.push_back(at);
      }
      return o;
    };
    const std::vector<int> oys = origins(r.gh), oxs = origins(r.gw);
    step::Tensor& acc = r.grid;
    acc.fill(0.f);
    std::vector<float> weight(size_t(r.gh) * r.gw, 0.f);
    std::vector<uint8_t> crop;
    int64_t first_token = 0;
    for (int oy : oys)
      for (int ox : oxs) {
        const int x0 = ox * P, y0 = oy * P;
        const int cw = std::min(tg * P, im.w - x0), ch = std::min(tg * P, im.h - y0);
        crop.resize(size_t(cw) * ch * im.channels);
        for (int y = 0; y < ch; ++y)
          std::memcpy(crop.data() + size_t(y) * cw * im.channels, im.rgb + (size_t(y0 + y) * im.w + x0) * im.channels, size_t(cw) * im.channels);
        Pass pass = run_pass({{crop.data(), cw, ch, im.channels}});
        add_stats(pass.out.stats);
        file(pass, 0, r, im, oy, ox, first_token, acc.data(), weight.data());
        first_token += pass.rect_start[1];
      }
    for (size_t i = 0; i < weight.size(); ++i) {
      float* a = acc.data() + int64_t(i) * K;
      const float inv = 1.f / weight[i];
      for (int k = 0; k < K; ++k) a[k] *= inv;
    }
  }

  void upsample(int b) {
    const Image& im = images_[b];
    const Result& r = results_[b];
    const int P = state_->model->config().patch, K = state_->model->config().num_classes;
    step::UpsampleParams u;
    u.K = K, u.gh = r.gh, u.gw = r.gw, u.patch = P, u.logits = r.grid.data();
    u.valid_h = im.h, u.valid_w = im.w, u.out_h = im.out_h, u.out_w = im.out_w;
    u.labels_u8 = im.labels8, u.labels_u16 = im.labels16, u.probs = want_probs_ ? im.probs : nullptr;
    cpu_backend().upsample(u);
    write_logits(b);
  }
  void write_logits(int b) {  // (K, gh, gw) from the (gh, gw, K) grid
    if (!want_logits_) return;
    const Image& im = images_[b];
    const Result& r = results_[b];
    const int K = state_->model->config().num_classes;
    const int64_t cells = int64_t(r.gh) * r.gw;
    for (int64_t i = 0; i < cells; ++i)
      for (int k = 0; k < K; ++k) im.logits[k * cells + i] = r.grid.data()[i * K + k];
  }

#ifdef STEP_SEG_HAVE_CUDA
  // The whole call on the GPU (device_model.h), from the resized uint8 images to the labels.
  void run_gpu() {
    const int K = state_->model->config().num_classes, B = int(images_.size());
    step::cuda::DeviceModel::SegmentRequest req;
    for (const Image& im : images_) req.images.push_back({im.rgb, im.h, im.w, im.channels, im.out_h, im.out_w});
    for (int c = 0; c < 3; ++c) req.mean[c] = 255.f * mean_[c], req.std[c] = 255.f * std_[c];
    req.merge = merge_, req.prune = prune_, req.want_probs = want_probs_, req.want_logits = want_logits_;
    step::cuda::DeviceModel::SegmentResult res = state_->gpu->segment(req);
    Pass pass;
    pass.out = std::move(res.enc);
    pass.plan = std::move(res.plan);
    for (const Result& r : results_) pass.grids.push_back({r.gh, r.gw});
    index_rects(pass);
    add_stats(pass.out.stats);
    gflops_policy_ += pass.plan.gflops;
    for (int b = 0; b < B; ++b) {
      const Image& im = images_[b];
      Result& r = results_[b];
      const bool logits = want_logits_ && pass.out.grid_logits.numel() > 0;  // downloaded only when asked for
      file(pass, b, r, im, 0, 0, 0, nullptr, nullptr);
      const std::vector<int32_t>& labels = res.labels[b];
      for (size_t i = 0; i < labels.size(); ++i) {
        if (im.labels8) im.labels8[i] = uint8_t(labels[i]);
        else im.labels16[i] = uint16_t(labels[i]);
      }
      if (want_probs_) std::memcpy(im.probs, res.probs[b].data(), res.probs[b].size() * sizeof(float));
      if (logits) {
        std::memcpy(r.grid.data(), pass.out.grid_logits.data() + int64_t(pass.out.grid_offset[b]) * K, r.grid.numel() * sizeof(float));
        write_logits(b);
      }
    }
  }
#endif

  Napi::Value result(Napi::Env env) override {
    Napi::Array list = Napi::Array::New(env, results_.size());
    for (size_t b = 0; b < results_.size(); ++b) {
      const Result& r = results_[b];
      Napi::Object o = Napi::Object::New(env);
      Napi::Array per = Napi::Array::New(env, r.tokens_per_size.size());
      for (size_t l = 0; l < r.tokens_per_size.size(); ++l) per.Set(uint32_t(l), double(r.tokens_per_size[l]));
      o.Set("tokensPerSize", per);
      Napi::Object stats = stats_to_js(env, stats_);
      stats.Set("denseTokens", double(r.dense));
      stats.Set("inputTokens", double(r.input));
      stats.Set("gflopsPolicy", gflops_policy());
      stats.Set("batchDenseTokens", double(stats_.dense_tokens));
      stats.Set("batchInputTokens", double(stats_.input_tokens));
      stats.Set("tiles", r.tiles);
      o.Set("stats", stats);
      list.Set(uint32_t(b), o);
    }
    return list;
  }
  double gflops_policy() const { return gflops_policy_; }

  std::shared_ptr<ModelState> state_;
  std::vector<Image> images_;
  std::vector<Napi::ObjectReference> refs_;  // the image data and the caller's result arrays
  float mean_[3], std_[3];
  bool want_probs_, want_logits_;
  step::MergeSettings merge_;
  step::PruneSettings prune_;
  Tile tile_;
  step::ForwardStats stats_;
  bool have_stats_ = false;
  double gflops_policy_ = 0;
  std::vector<Result> results_;
};

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

Napi::Value NativeModel::segment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto state = live(env);
  if (!state->model) throw Napi::Error::New(env, "segment() needs a ViT segmentation model");
  const int P = state->model->config().patch, K = state->model->config().num_classes;
  Napi::Array list = to_array(info[0], "images");
  if (!info[1].IsObject()) throw_bad_input(env, "segment: expected an options object");
  Napi::Object opts = info[1].As<Napi::Object>();
  const bool want_probs = get_bool(opts, "probs"), want_logits = get_bool(opts, "logits");
  std::vector<SegmentJob::Image> images;
  std::vector<Napi::ObjectReference> refs;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsObject()) throw_bad_input(env, "segment: expected image objects");
    Napi::Object o = list.Get(i).As<Napi::Object>();
    SegmentJob::Image im;
    im.w = to_int(o.Get("width"), "width", 1, 1 << 20), im.h = to_int(o.Get("height"), "height", 1, 1 << 20);
    im.channels = to_int(o.Get("channels"), "channels", 3, 4);
    im.out_w = to_int(o.Get("outWidth"), "outWidth", 1), im.out_h = to_int(o.Get("outHeight"), "outHeight", 1);
    im.rgb = out_array<uint8_t>(o.Get("data"), napi_uint8_array, size_t(im.w) * im.h * im.channels, "image data", refs);
    const size_t pixels = size_t(im.out_w) * im.out_h, cells = size_t((im.h + P - 1) / P) * ((im.w + P - 1) / P);
    if (K <= 256) im.labels8 = out_array<uint8_t>(o.Get("labels"), napi_uint8_array, pixels, "labels", refs);
    else im.labels16 = out_array<uint16_t>(o.Get("labels"), napi_uint16_array, pixels, "labels", refs);
    if (want_probs) im.probs = out_array<float>(o.Get("probs"), napi_float32_array, size_t(K) * pixels, "probs", refs);
    if (want_logits) im.logits = out_array<float>(o.Get("logits"), napi_float32_array, size_t(K) * cells, "logits", refs);
    im.index = out_array<int32_t>(o.Get("index"), napi_int32_array, cells, "tokenMap.index", refs);
    im.size = out_array<uint8_t>(o.Get("size"), napi_uint8_array, cells, "tokenMap.size", refs);
    im.exit_layer = out_array<uint8_t>(o.Get("exitLayer"), napi_uint8_array, cells, "tokenMap.exitLayer", refs);
    images.push_back(im);
  }
  float mean[3], stdv[3];
  Napi::Array m = to_array(opts.Get("mean"), "mean"), s = to_array(opts.Get("std"), "std");
  for (uint32_t c = 0; c < 3; ++c) {
    mean[c] = to_float(m.Get(c), "mean");
    stdv[c] = to_float(s.Get(c), "std");
    if (!std::isfinite(255.f * mean[c]) || !(255.f * stdv[c] > 0.f) || !std::isfinite(1.f / (255.f * stdv[c])))
      throw_bad_input(env, "pixel mean and std must be finite and std positive");
  }
  step::MergeSettings merge;
  Napi::Value mv = opts.Get("merge");
  if (mv.IsObject()) {
    Napi::Object m = mv.As<Napi::Object>();
    std::string policy = m.Get("policy").ToString().Utf8Value();
    merge.policy = policy == "learned" ? step::MergePolicy::kLearned : step::MergePolicy::kSimilarity;
    Napi::Array sizes = to_array(m.Get("levels"), "merge.levels"), thr = to_array(m.Get("thresholds"), "merge.thresholds");
    if (sizes.Length() != thr.Length() || sizes.Length() > 8) throw_bad_input(env, "merge: one threshold per level, at most 8 levels");
    for (uint32_t i = 0; i < sizes.Length(); ++i) {
      merge.sizes.push_back(to_int(sizes.Get(i), "merge.levels[i]", 2, 64));
      merge.thresholds.push_back(to_float(thr.Get(i), "merge.thresholds[i]"));
    }
    merge.color_tau = to_float(m.Get("colorTau"), "colorTau"), merge.texture_tau = to_float(m.Get("textureTau"), "textureTau");
    if (!(merge.color_tau > 0.f) || !(merge.texture_tau > 0.f)) throw_bad_input(env, "merge: colorTau and textureTau must be positive");
    const std::string unshare = m.Get("unshare").ToString().Utf8Value();
    if (unshare != "copy" && unshare != "blend") throw_bad_input(env, "merge: unshare must be 'copy' or 'blend'");
    merge.unshare = unshare == "blend" ? step::UnshareMode::kBlend : step::UnshareMode::kCopy;
  } else {
    merge.unshare = step::UnshareMode::kCopy;  // nothing merges: every rect is one patch, both modes copy
  }
  step::PruneSettings prune;
  Napi::Value pv = opts.Get("prune");
  if (pv.IsObject()) {
    Napi::Object pr = pv.As<Napi::Object>();
    prune.enabled = true;
    prune.threshold = to_float(pr.Get("threshold"), "threshold"), prune.top_k = to_int(pr.Get("keepTopK"), "keepTopK", 0);
    if (!pr.Get("agree").IsBoolean()) throw_bad_input(env, "prune: agree must be a boolean");
    prune.agree = pr.Get("agree").As<Napi::Boolean>().Value() ? 1 : 0;
    Napi::Array layers = to_array(pr.Get("exitLayers"), "prune.exitLayers");
    for (uint32_t i = 0; i < layers.Length(); ++i) prune.layers.push_back(to_int(layers.Get(i), "prune.exitLayers[i]", 1, 255));
  }
  SegmentJob::Tile tile;
  Napi::Value tv = opts.Get("tile");
  if (tv.IsObject()) {
    Napi::Object t = tv.As<Napi::Object>();
    tile.size = to_int(t.Get("size"), "tile.size", P, 1 << 16), tile.stride = to_int(t.Get("stride"), "tile.stride", P, 1 << 16);
    if (tile.size % P || tile.stride % P || tile.stride > tile.size)
      throw_bad_input(env, "tile: size and stride must be multiples of the patch size, stride at most size");
  }
  auto* job = new SegmentJob(env, state, std::move(images), std::move(refs), mean, stdv, want_probs, want_logits, std::move(merge),
                             std::move(prune), tile);
  job->Queue();
  return job->promise();
}

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

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  Napi::Function ctor = NativeModel::define(env);
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
