// device_model.cu: the GPU forward of a ViT segmentation model (see device_model.h): creation, weight
// upload, the position-embedding cache, the activation workspace (the memory pool) and the host side
// shared by forward() (device_encoder.cu) and segment() (device_segment.cu). The class is in
// device_model_impl.cuh.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../core/device.h"
#include "device_model_impl.cuh"

namespace step::cuda {
namespace device_model_detail {
namespace {

constexpr size_t kAlign = 256;

std::string mib(size_t bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f MiB", double(bytes) / (1024.0 * 1024.0));
  return s;
}

uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// Bump allocator over one DeviceBuffer: every activation buffer of a forward, 256-byte aligned.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    const size_t at = used_;
    used_ = (used_ + size_t(std::max<int64_t>(count, 1)) * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace

// cudaMalloc with the typed out-of-memory error the house rules ask for. A failed allocation leaves
// no sticky error (cudaGetLastError clears it), so the model and the process stay usable.
void* device_alloc(size_t bytes, const std::string& what) {
  void* p = nullptr;
  if (bytes == 0) return nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaSuccess) return p;
  cudaGetLastError();
  if (err == cudaErrorMemoryAllocation) {
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    throw Error(ErrorCode::kOutOfMemory, "GPU out of memory: " + what + " needs " + mib(bytes) + ", the GPU has " +
                                             mib(free) + " free of " + mib(total) +
                                             " (use a smaller image or batch, or device 'cpu')");
  }
  throw_cuda_error(err, ("cudaMalloc for " + what).c_str(), __FILE__, __LINE__);
}

CudaVitModel::CudaVitModel(VitModel& model, Backend& host) : model_(model), host_(host) {
  const DeviceProbe& probe = probe_cuda();
  if (!probe.usable)
    throw Error(ErrorCode::kDeviceUnavailable, "the GPU cannot be used: " + probe.reason);
  const char* graphs = std::getenv("STEP_SEG_CUDA_GRAPHS");
  use_graphs_ = !(graphs && std::string(graphs) == "0");
  STEP_CUDA_CHECK(cudaSetDevice(0));
  STEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    upload_weights();
    if (model_.policy()) upload_policy(*model_.policy());
    STEP_CUDA_CHECK(cudaEventCreate(&start_));
    STEP_CUDA_CHECK(cudaEventCreate(&stop_));
  } catch (...) {
    release();
    throw;
  }
}

void CudaVitModel::release() {
  if (stream_) cudaStreamSynchronize(stream_);
  drop_graphs();
  blocks_.clear(), exits_.clear(), pos_cache_.clear(), pos_bytes_.clear(), pos_used_.clear();
  workspace_.reset(), patch_w_ = {}, head_ = {}, final_norm_ = {}, norm_pre_ = {};
  prefix_tokens_.reset(), pos_prefix_.reset(), policy_.reset();
  if (start_) cudaEventDestroy(start_), start_ = nullptr;
  if (stop_) cudaEventDestroy(stop_), stop_ = nullptr;
  if (stream_) cudaStreamDestroy(stream_), stream_ = nullptr;
}

void CudaVitModel::drop_graphs() {
  for (auto& [k, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
}

DeviceBuffer CudaVitModel::upload_f32(const float* src, int64_t n, const std::string& what) {
  DeviceBuffer b(size_t(n) * 4, what);
  STEP_CUDA_CHECK(cudaMemcpy(b.as<void>(), src, size_t(n) * 4, cudaMemcpyHostToDevice));
  weight_bytes_ += b.bytes();
  return b;
}

DeviceBuffer CudaVitModel::upload_bf16(const float* src, int64_t n, const std::string& what) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) h[size_t(i)] = float_to_bf16(src[i]);
  DeviceBuffer b(size_t(n) * 2, what);
  STEP_CUDA_CHECK(cudaMemcpy(b.as<void>(), h.data(), size_t(n) * 2, cudaMemcpyHostToDevice));
  weight_bytes_ += b.bytes();
  return b;
}

Linear CudaVitModel::linear(const std::string& name, int N, int K) {
  Linear l;
  l.N = N, l.K = K;
  l.w = upload_bf16(model_.w(name + ".weight").data(), int64_t(N) * K, name + ".weight");
  if (const float* b = model_.w_or_null(name + ".bias")) l.b = upload_f32(b, N, name + ".bias");
  return l;
}

Norm CudaVitModel::norm(const std::string& name) {
  const int C = model_.config().embed_dim;
  return {upload_f32(model_.w(name + ".weight").data(), C, name + ".weight"),
          upload_f32(model_.w(name + ".bias").data(), C, name + ".bias")};
}

void CudaVitModel::upload_weights() {
  const VitConfig& c = model_.config();
  const int C = c.embed_dim, P = c.patch, pre = c.prefix();
  patch_w_ = linear("patch_embed.proj", C, 3 * P * P);  // the conv weight (C, 3, P, P) is (C, 3 P P)
  if (c.pre_norm) norm_pre_ = norm("norm_pre");
  std::vector<float> prefix(size_t(std::max(pre, 1)) * C, 0.f);
  if (c.class_token) std::memcpy(prefix.data(), model_.w("cls_token").data(), size_t(C) * 4);
  if (c.reg_tokens)
    std::memcpy(prefix.data() + (c.class_token ? C : 0), model_.w("reg_token").data(), size_t(c.reg_tokens) * C * 4);
  prefix_tokens_ = upload_f32(prefix.data(), int64_t(prefix.size()), "prefix tokens");
  if (!c.no_embed_class && pre > 0) pos_prefix_ = upload_f32(model_.w("pos_embed").data(), int64_t(pre) * C, "pos_embed");
  for (int i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    Block blk;
    blk.norm1 = norm(b + "norm1"), blk.norm2 = norm(b + "norm2");
    blk.qkv = linear(b + "attn.qkv", 3 * C, C);
    blk.proj = linear(b + "attn.proj", C, C);
    blk.fc1 = linear(b + "mlp.fc1", c.mlp_hidden, C);
    blk.fc2 = linear(b + "mlp.fc2", C, c.mlp_hidden);
    if (c.layer_scale) {
      blk.ls1 = upload_f32(model_.w(b + "ls1.gamma").data(), C, b + "ls1.gamma");
      blk.ls2 = upload_f32(model_.w(b + "ls2.gamma").data(), C, b + "ls2.gamma");
    }
    blocks_.push_back(std::move(blk));
  }
  final_norm_ = norm("norm");
  if (c.num_classes > 0) {
    head_ = linear("decoder.head", c.num_classes, C);
    for (int layer : c.exit_layers) {
      const std::string e = "exit_heads." + std::to_string(layer) + ".";
      ExitHead h;
      h.norm = norm(e + "norm");
      h.head = linear(e + "head", c.num_classes, C);
      exits_.emplace(layer, std::move(h));
    }
  }
}

const float* CudaVitModel::pos_grid(int gh, int gw) {
  auto key = std::make_pair(gh, gw);
  auto it = pos_cache_.find(key);
  if (it == pos_cache_.end()) {
    const std::shared_ptr<const Tensor> g = model_.pos_grid(host_, gh, gw);
    it = pos_cache_.emplace(key, upload_f32(g->data(), g->numel(), "position embeddings")).first;
    pos_bytes_[key] = g->numel() * sizeof(float);
  }
  pos_used_[key] = ++pos_clock_;
  return it->second.as<float>();
}

void CudaVitModel::evict_pos(const std::vector<std::pair<int, int>>& keep) {
  const size_t limit = model_.pos_cache_info().limit;
  size_t total = 0;
  for (const auto& [k, b] : pos_bytes_) total += b;
  while (total > limit) {
    auto oldest = pos_used_.end();
    for (auto i = pos_used_.begin(); i != pos_used_.end(); ++i)
      if (std::find(keep.begin(), keep.end(), i->first) == keep.end() && (oldest == pos_used_.end() || i->second < oldest->second)) oldest = i;
    if (oldest == pos_used_.end()) break;
    total -= pos_bytes_[oldest->first];
    weight_bytes_ -= pos_cache_.at(oldest->first).bytes();
    pos_cache_.erase(oldest->first), pos_bytes_.erase(oldest->first);
    pos_used_.erase(oldest);
  }
}

CudaVitModel::Buffers CudaVitModel::carve(const CallShape& s, char* base, size_t* bytes) const {
  const VitConfig& c = model_.config();
  const int64_t C = c.embed_dim, P = c.patch, K = std::max(c.num_classes, 1), A = s.a_bound, Tp = s.tp_bound;
  Carver v(base);
  Buffers b;
  b.rgb = v.take<uint8_t>(s.rgb_bytes);
  b.pixels = v.take<float>(int64_t(s.B) * 3 * s.H * s.W);
  b.scores = v.take<float>(s.cells);
  b.score_ws = v.take<float>(4 * s.cells);
  b.stage = v.take<TokenRect>(s.cells);
  b.token_of_patch = v.take<int32_t>(s.cells);
  b.counts = v.take<int32_t>(s.B);
  b.rect_count = v.take<int32_t>(1);
  b.levels = v.take<int32_t>(8), b.thresholds = v.take<float>(8);
  b.rects = v.take<TokenRect>(Tp);
  b.cols = v.take<uint16_t>(Tp * 3 * P * P);
  b.embedded = v.take<float>(Tp * C);
  b.pos = v.take<float>(s.cells * C);
  b.x[0] = v.take<float>(A * C), b.x[1] = v.take<float>(A * C);
  b.h = v.take<uint16_t>(A * C);
  b.qkv = v.take<uint16_t>(A * 3 * C);
  b.att = v.take<uint16_t>(A * C);
  b.mlp = v.take<uint16_t>(A * c.mlp_hidden);
  b.tokens = v.take<float>(A * C);
  b.logits = v.take<float>(A * K);
  b.halt = v.take<uint8_t>(A);
  b.rect_of_row[0] = v.take<int32_t>(A), b.rect_of_row[1] = v.take<int32_t>(A);
  b.src_row = v.take<int32_t>(A);
  b.rect_logits = v.take<float>(Tp * K);
  b.rect_exit = v.take<int32_t>(Tp);
  b.grid_logits = v.take<float>(s.cells * K);
  b.grid_flat = v.take<float>(s.cells * K);
  b.cell_label = v.take<int32_t>(s.cells);
  b.offsets[0] = v.take<int32_t>(s.B + 1), b.offsets[1] = v.take<int32_t>(s.B + 1);
  b.grid_offset = v.take<int32_t>(s.B), b.grid_w = v.take<int32_t>(s.B), b.grid_h = v.take<int32_t>(s.B);
  b.block_offsets = v.take<int32_t>(int64_t(c.depth + 1) * (s.B + 1));
  b.labels = v.take<int32_t>(s.out_pixels);
  b.probs = s.probs ? v.take<float>(K * s.out_pixels) : nullptr;
  const bool trunk = s.trunk.map > 0;
  b.trunk_x = trunk ? v.take<float>(int64_t(s.H) * s.W * 3) : nullptr;
  b.trunk_map[0] = trunk ? v.take<float>(s.trunk.map) : nullptr;
  b.trunk_map[1] = trunk ? v.take<float>(s.trunk.map) : nullptr;
  b.trunk_exp = trunk ? v.take<float>(s.trunk.expanded) : nullptr;
  b.trunk_mid = trunk ? v.take<float>(s.trunk.mid) : nullptr;
  b.trunk_bf16 = trunk ? v.take<uint16_t>(s.trunk.bf16) : nullptr;
  b.pooled = trunk ? v.take<float>(s.pooled) : nullptr;
  b.pooled_bf16 = trunk ? v.take<uint16_t>(s.pooled) : nullptr;
  *bytes = v.used();
  return b;
}

CudaVitModel::Buffers CudaVitModel::workspace_for(const CallShape& s) {
  size_t need = 0;
  carve(s, nullptr, &need);
  if (need > workspace_.bytes()) {
    STEP_CUDA_CHECK(cudaStreamSynchronize(stream_));
    drop_graphs();        // they hold pointers into the old workspace
    workspace_.reset();   // free first: peak use is the new size only
    workspace_ = DeviceBuffer(need + need / 4, "the activation workspace of a " + std::to_string(s.B) + " x " +
                                                   std::to_string(s.H) + " x " + std::to_string(s.W) + " batch");
  }
  return carve(s, workspace_.as<char>(), &need);
}

CallShape CudaVitModel::shape_of(int B, int H, int W, const std::vector<std::pair<int, int>>& grids,
                                 std::vector<int32_t>* grid_offset, std::vector<int32_t>* grid_w) const {
  const int pre = model_.config().prefix();
  CallShape s;
  s.B = B, s.H = H, s.W = W, s.grids = grids;
  grid_offset->resize(B), grid_w->resize(B);
  for (int b = 0; b < B; ++b) {
    (*grid_offset)[b] = int32_t(s.cells), (*grid_w)[b] = grids[b].second;
    const int64_t cells = int64_t(grids[b].first) * grids[b].second;
    s.cells += cells;
    s.max_t = std::max<int64_t>(s.max_t, cells + pre);
  }
  s.tp_bound = int(s.cells), s.a_bound = int(s.cells + int64_t(B) * pre);
  return s;
}

void CudaVitModel::copy_pos(const Buffers& w, const std::vector<std::pair<int, int>>& grids,
                            const std::vector<int32_t>& grid_offset) {
  const int C = model_.config().embed_dim;
  for (const auto& [gh, gw] : grids) pos_grid(gh, gw);  // uploaded (synchronous), marked used
  evict_pos(grids);
  for (size_t b = 0; b < grids.size(); ++b)
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.pos + int64_t(grid_offset[b]) * C, pos_grid(grids[b].first, grids[b].second),
                                    size_t(grids[b].first) * grids[b].second * C * 4, cudaMemcpyDeviceToDevice, stream_));
}

void CudaVitModel::finish(const std::vector<cudaEvent_t>& events, const std::vector<std::string>& names, const char* what,
                          ForwardStats& st, float* last, float* total_ms) {
  const cudaError_t err = cudaStreamSynchronize(stream_);
  *last = 0;
  for (size_t g = 0; g < events.size(); ++g) {
    float ms = 0;
    if (err == cudaSuccess) {
      cudaEventElapsedTime(&ms, start_, events[g]);
      st.ms.emplace_back(names[g] + " (gpu)", ms - *last);
      *last = ms;
    }
    cudaEventDestroy(events[g]);
  }
  if (err != cudaSuccess) throw_cuda_error(err, what, __FILE__, __LINE__);
  cudaEventElapsedTime(total_ms, start_, stop_);
}

}  // namespace device_model_detail

std::unique_ptr<DeviceModel> DeviceModel::create(VitModel& model, Backend& host) {
  return std::make_unique<device_model_detail::CudaVitModel>(model, host);
}

DeviceMemoryInfo device_memory_info() {
  if (!probe_cuda().usable) return {};
  DeviceMemoryInfo m;
  STEP_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  return m;
}

}  // namespace step::cuda
