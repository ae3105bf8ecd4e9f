// model_binding.cpp: models from JS: createModel, and the NativeModel's forwardFeatures, segment,
// dispose and cacheInfo. Each call reads its JS values here and queues a Job whose run() calls the
// engine (core/features.h, core/segment.h) under the model's run mutex. planSegment and planFeatures
// answer at once: a call's layout and bytes (core/layout.h), which lib/ checks and reserves first.
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../core/effnet.h"
#include "../core/features.h"
#include "../core/file_map.h"
#include "../core/layout.h"
#include "../core/merge.h"
#include "../core/model.h"
#include "../core/segment.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/parallel.h"
#include "bindings.h"
#include "job.h"
#include "js_values.h"

#ifdef STEP_SEG_HAVE_CUDA
#include "../cuda/device_model.h"
#endif

namespace step::addon {
namespace {

// One CPU backend per precision (a bf16 request on a CPU without a bfloat16 kernel gets the float32
// one: CpuBackend::precision() says which runs).
step::cpu::CpuBackend& cpu_backend(step::Precision precision = step::Precision::kFp32) {
  static step::cpu::CpuBackend fp32(step::Precision::kFp32), bf16(step::Precision::kBf16);
  return precision == step::Precision::kBf16 ? bf16 : fp32;
}

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

  // The model's GPU engine, or null when it runs on the CPU.
  step::DeviceSegmenter* device() {
#ifdef STEP_SEG_HAVE_CUDA
    return gpu.get();
#else
    return nullptr;
#endif
  }
};

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("forwardFeatures", &NativeModel::forward_features),
                        InstanceMethod("segment", &NativeModel::segment),
                        InstanceMethod("planSegment", &NativeModel::plan_segment),
                        InstanceMethod("planFeatures", &NativeModel::plan_features),
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
  Napi::Value plan_segment(const Napi::CallbackInfo& info);
  Napi::Value plan_features(const Napi::CallbackInfo& info);
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

}  // namespace

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
  cfg.policy_pool = to_int(c.Get("policyPool"), "policyPool", 1, 4);
  cfg.policy_feature = to_int(c.Get("policyFeature"), "policyFeature", 0, 4);
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

namespace {

// forwardFeatures(pixels: Float32Array (N,3,H,W), dims, capture) -> { tokens, captured, stats } (ViTs)
// or { stages: [{ data, dims }], stats } (bare EfficientNet trunks): core/features.h.
class ForwardJob : public Job {
 public:
  ForwardJob(Napi::Env env, std::shared_ptr<ModelState> state, std::vector<float> pixels, int n, int h, int w,
             bool capture)
      : Job(env), state_(std::move(state)), pixels_(std::move(pixels)) {
    request_.pixels = pixels_.data(), request_.images = n, request_.height = h, request_.width = w, request_.capture = capture;
  }

 protected:
  void run() override {
    std::lock_guard<std::mutex> lock(state_->run_mutex);
    out_ = state_->trunk ? step::forward_features(*state_->trunk, *state_->cpu, request_)
                         : step::forward_features(*state_->model, *state_->cpu, state_->device(), request_);
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    if (!out_.stages.empty()) {
      Napi::Array stages = Napi::Array::New(env, out_.stages.size());
      for (size_t i = 0; i < out_.stages.size(); ++i) {
        const step::Tensor& t = out_.stages[i];
        Napi::Object st = Napi::Object::New(env);
        st.Set("data", to_js(env, t.data(), t.numel()));
        Napi::Array dims = Napi::Array::New(env, 4);
        for (uint32_t d = 0; d < 4; ++d) dims.Set(d, double(t.dim(d)));
        st.Set("dims", dims);
        stages.Set(uint32_t(i), st);
      }
      o.Set("stages", stages);
      o.Set("stats", stats_to_js(env, out_.enc.stats));
      return o;
    }
    o.Set("tokens", to_js(env, out_.enc.tokens.data(), out_.enc.tokens.numel()));
    Napi::Object captured = Napi::Object::New(env);
    for (auto& [name, t] : out_.enc.captured) captured.Set(name, to_js(env, t.data(), t.numel()));
    o.Set("captured", captured);
    o.Set("stats", stats_to_js(env, out_.enc.stats));
    return o;
  }

 private:
  std::shared_ptr<ModelState> state_;
  std::vector<float> pixels_;
  step::FeaturesRequest request_;  // over pixels_
  step::FeaturesResult out_;
};

// dims [N, 3, H, W] of forwardFeatures' pixels: N, H, W
struct FeatureDims {
  int n, h, w;
};
FeatureDims read_feature_dims(const Napi::Value& v) {
  Napi::Array dims = to_array(v, "dims");
  return {to_int(dims.Get(0u), "dims[0]", 1, 4096), to_int(dims.Get(2u), "dims[2]", 1, 65536), to_int(dims.Get(3u), "dims[3]", 1, 65536)};
}

Napi::Value NativeModel::forward_features(const Napi::CallbackInfo& info) {
  auto state = live(info.Env());
  std::vector<float> pixels = get_vector<float>(info[0], "pixels");
  const auto [n, h, w] = read_feature_dims(info[1]);
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
// and written on the worker thread (core/segment.h): nothing proportional to the image runs on the main
// thread. The arrays (and the image) are held by references until the job ends; the caller does not see
// them before. With `tile`, each image runs as overlapping tiles (core/segment.h says how).
class SegmentJob : public Job {
 public:
  SegmentJob(Napi::Env env, std::shared_ptr<ModelState> state, step::SegmentRequest request, std::vector<Napi::ObjectReference> refs)
      : Job(env), state_(std::move(state)), request_(std::move(request)), refs_(std::move(refs)) {}

 protected:
  void run() override {
    std::lock_guard<std::mutex> lock(state_->run_mutex);
    out_ = step::segment(*state_->model, *state_->cpu, state_->device(), request_);
  }
  Napi::Value result(Napi::Env env) override {
    Napi::Array list = Napi::Array::New(env, out_.images.size());
    for (size_t b = 0; b < out_.images.size(); ++b) {
      const step::SegmentImageResult& r = out_.images[b];
      Napi::Object o = Napi::Object::New(env);
      Napi::Array per = Napi::Array::New(env, r.tokens_per_size.size());
      for (size_t l = 0; l < r.tokens_per_size.size(); ++l) per.Set(uint32_t(l), double(r.tokens_per_size[l]));
      o.Set("tokensPerSize", per);
      Napi::Object stats = stats_to_js(env, out_.stats);
      stats.Set("denseTokens", double(r.dense));
      stats.Set("inputTokens", double(r.input));
      stats.Set("gflopsPolicy", out_.gflops_policy);
      stats.Set("batchDenseTokens", double(out_.stats.dense_tokens));
      stats.Set("batchInputTokens", double(out_.stats.input_tokens));
      stats.Set("tiles", r.tiles);
      o.Set("stats", stats);
      list.Set(uint32_t(b), o);
    }
    return list;
  }

 private:
  std::shared_ptr<ModelState> state_;
  step::SegmentRequest request_;
  std::vector<Napi::ObjectReference> refs_;  // the image data and the caller's result arrays
  step::SegmentResult out_;
};

// options.tile: { size, stride } in pixels, or absent (no tiling)
step::TileSettings read_tile(Napi::Env env, const Napi::Value& v, int P) {
  step::TileSettings tile;
  if (!v.IsObject()) return tile;
  Napi::Object t = v.As<Napi::Object>();
  tile.size = to_int(t.Get("size"), "tile.size", P, 1 << 16), tile.stride = to_int(t.Get("stride"), "tile.stride", P, 1 << 16);
  if (tile.size % P || tile.stride % P || tile.stride > tile.size)
    throw_bad_input(env, "tile: size and stride must be multiples of the patch size, stride at most size");
  return tile;
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
  step::SegmentRequest req;
  req.want_probs = want_probs, req.want_logits = want_logits;
  std::vector<Napi::ObjectReference> refs;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsObject()) throw_bad_input(env, "segment: expected image objects");
    Napi::Object o = list.Get(i).As<Napi::Object>();
    step::SegmentImage im;
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
    req.images.push_back(im);
  }
  Napi::Array m = to_array(opts.Get("mean"), "mean"), s = to_array(opts.Get("std"), "std");
  for (uint32_t c = 0; c < 3; ++c) {
    const float mean = req.mean[c] = to_float(m.Get(c), "mean"), stdv = req.std[c] = to_float(s.Get(c), "std");
    if (!std::isfinite(255.f * mean) || !(255.f * stdv > 0.f) || !std::isfinite(1.f / (255.f * stdv)))
      throw_bad_input(env, "pixel mean and std must be finite and std positive");
  }
  step::MergeSettings& merge = req.merge;
  Napi::Value mv = opts.Get("merge");
  if (mv.IsObject()) {
    Napi::Object m = mv.As<Napi::Object>();
    std::string policy = m.Get("policy").ToString().Utf8Value();
    merge.policy = policy == "learned" ? step::MergePolicy::kLearned : step::MergePolicy::kSimilarity;
    Napi::Array levels = to_array(m.Get("levels"), "merge.levels"), thr = to_array(m.Get("thresholds"), "merge.thresholds");
    if (levels.Length() != thr.Length() || levels.Length() > 8) throw_bad_input(env, "merge: one threshold per level, at most 8 levels");
    for (uint32_t i = 0; i < levels.Length(); ++i) {
      merge.levels.push_back(to_int(levels.Get(i), "merge.levels[i]", 2, 64));
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
  step::PruneSettings& prune = req.prune;
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
  req.tile = read_tile(env, opts.Get("tile"), P);
  auto* job = new SegmentJob(env, state, std::move(req), std::move(refs));
  job->Queue();
  return job->promise();
}

// { forward, results }: a plan's bytes
Napi::Object bytes_to_js(Napi::Env env, double forward, double results) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("forward", forward), o.Set("results", results);
  return o;
}

// planSegment({ images: [{ width, height, outWidth, outHeight }], tile?, learnedPolicy, probs, logits })
//   -> { tokens, bytes: { forward, results }, forwards: [{ tokens, bytes, count }],
//        images: [{ gh, gw, tiles, bytes }] }: core/layout.h's SegmentPlan, at once (no job).
Napi::Value NativeModel::plan_segment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto state = live(env);
  if (!state->model) throw Napi::Error::New(env, "planSegment() needs a ViT segmentation model");
  if (!info[0].IsObject()) throw_bad_input(env, "planSegment: expected a request object");
  Napi::Object o = info[0].As<Napi::Object>();
  step::SegmentPlanRequest req;
  Napi::Array list = to_array(o.Get("images"), "images");
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsObject()) throw_bad_input(env, "planSegment: expected image objects");
    Napi::Object im = list.Get(i).As<Napi::Object>();
    req.images.push_back({to_int(im.Get("width"), "width", 1, 1 << 20), to_int(im.Get("height"), "height", 1, 1 << 20),
                          to_int(im.Get("outWidth"), "outWidth", 1), to_int(im.Get("outHeight"), "outHeight", 1)});
  }
  req.tile = read_tile(env, o.Get("tile"), state->model->config().patch);
  req.learned_policy = get_bool(o, "learnedPolicy"), req.want_probs = get_bool(o, "probs"), req.want_logits = get_bool(o, "logits");
  const step::SegmentPlan plan = step::plan_segment(state->model->config(), req, step::cpu::num_threads());
  Napi::Object out = Napi::Object::New(env);
  out.Set("tokens", double(plan.tokens)), out.Set("bytes", bytes_to_js(env, plan.forward_bytes, plan.result_bytes));
  Napi::Array forwards = Napi::Array::New(env, plan.forwards.size());
  for (size_t i = 0; i < plan.forwards.size(); ++i) {
    Napi::Object f = Napi::Object::New(env);
    f.Set("tokens", double(plan.forwards[i].tokens)), f.Set("bytes", plan.forwards[i].bytes), f.Set("count", double(plan.forwards[i].count));
    forwards.Set(uint32_t(i), f);
  }
  out.Set("forwards", forwards);
  Napi::Array images = Napi::Array::New(env, plan.images.size());
  for (size_t i = 0; i < plan.images.size(); ++i) {
    const step::SegmentPlan::Image& p = plan.images[i];
    Napi::Object im = Napi::Object::New(env);
    im.Set("gh", p.gh), im.Set("gw", p.gw), im.Set("tiles", double(p.tiles)), im.Set("bytes", p.result_bytes);
    images.Set(uint32_t(i), im);
  }
  out.Set("images", images);
  return out;
}

// planFeatures(dims [N, 3, H, W], capture) -> { tokens, bytes: { forward, results } }: core/layout.h's FeaturesPlan.
Napi::Value NativeModel::plan_features(const Napi::CallbackInfo& info) {
  auto state = live(info.Env());
  const auto [n, h, w] = read_feature_dims(info[0]);
  const step::FeaturesPlan plan = state->trunk ? step::plan_trunk_features(n, h, w)
                                               : step::plan_features(state->model->config(), n, h, w, info[1].ToBoolean().Value(),
                                                                     step::cpu::num_threads());
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("tokens", double(plan.tokens)), out.Set("bytes", bytes_to_js(info.Env(), plan.forward_bytes, plan.result_bytes));
  return out;
}

}  // namespace

Napi::Function define_native_model(Napi::Env env) { return NativeModel::define(env); }

}  // namespace step::addon
