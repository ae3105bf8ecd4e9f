// device_model.cu: the GPU forward of a ViT segmentation model (see device_model.h). One backend call
// of model.cpp is one kernel entry of cuda_ops.h here, in the same order, so the two read side by side.
#include "device_model.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../core/device.h"
#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr size_t kAlign = 256;

std::string mib(size_t bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f MiB", double(bytes) / (1024.0 * 1024.0));
  return s;
}

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

// One device allocation, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const std::string& what) : p_(device_alloc(bytes, what)), bytes_(bytes) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) reset(), p_ = o.p_, bytes_ = o.bytes_, o.p_ = nullptr, o.bytes_ = 0;
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }
  void reset() {
    if (p_) cudaFree(p_);
    p_ = nullptr, bytes_ = 0;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// ---- small kernels of the runtime itself (bookkeeping of the packed list) -----------------------

// rect_exit[rect_of_row[r]] = layer for every halted row r < *rows that carries a rect.
__global__ void mark_exits_kernel(const int32_t* rows, const uint8_t* halt, const int32_t* rect_of_row, int layer,
                                  int32_t* rect_exit, int rows_bound) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_bound || r >= *rows) return;
  if (halt[r] && rect_of_row[r] >= 0) rect_exit[rect_of_row[r]] = layer;
}

// out[r] = in[src_row[r]] for r < *rows (the rect of each row after compaction).
__global__ void gather_int_kernel(const int32_t* rows, const int32_t* src_row, const int32_t* in, int32_t* out,
                                  int rows_bound) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_bound || r >= *rows) return;
  out[r] = in[src_row[r]];
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

struct Linear {
  DeviceBuffer w;  // (N, K) bf16
  DeviceBuffer b;  // (N) float32, or empty
  int N = 0, K = 0;
};
struct Norm {
  DeviceBuffer gamma, beta;  // (C) float32
};
struct Block {
  Norm norm1, norm2;
  Linear qkv, proj, fc1, fc2;
  DeviceBuffer ls1, ls2;  // (C) float32 layer scale, or empty
};
struct ExitHead {
  Norm norm;
  Linear head;
};
// The learned merge policy on the device: the EfficientNet-Lite0 trunk (BatchNorm folded) and one
// sigmoid head per window side. Stem and depthwise convolutions keep float32 weights (conv.cu);
// pointwise convolutions and the heads are GEMMs with bf16 weights.
struct DeviceConv {
  DeviceBuffer w, b;  // (out_c, in_c / groups, k, k), (out_c) float32
};
struct PolicyBlock {
  DeviceConv dw;
  Linear pw, pwl;  // separable: pw projects; inverted residual: pw expands, pwl projects
};
struct DevicePolicy {
  DeviceConv stem;
  std::vector<PolicyBlock> blocks;
  std::map<int, Linear> heads;  // per window side: N = 1, K = 320
};

// Element counts of the trunk's buffers for one image of H x W pixels, and its GFLOPs.
struct TrunkSizes {
  int64_t map = 0, expanded = 0, mid = 0, bf16 = 0;
  int top_h = 0, top_w = 0;
  double gflops = 0;
};
TrunkSizes trunk_sizes(int H, int W) {
  TrunkSizes t;
  using T = EffNetTrunk;
  int ih = T::conv_out(H, 3, 2), iw = T::conv_out(W, 3, 2);
  t.map = int64_t(ih) * iw * T::kStemChannels;
  t.gflops += 2e-9 * double(ih) * iw * T::kStemChannels * 27;
  for (const T::Block& b : T::blocks()) {
    const int oh = T::conv_out(ih, b.kernel, b.stride), ow = T::conv_out(iw, b.kernel, b.stride);
    const int64_t in_px = int64_t(ih) * iw, out_px = int64_t(oh) * ow;
    const int dw_c = b.separable ? b.in : b.mid;
    t.map = std::max(t.map, out_px * b.out);
    t.mid = std::max(t.mid, out_px * dw_c);
    t.bf16 = std::max(t.bf16, out_px * dw_c);
    if (!b.separable) {
      t.expanded = std::max(t.expanded, in_px * b.mid);
      t.bf16 = std::max(t.bf16, in_px * b.in);
      t.gflops += 2e-9 * double(in_px) * b.in * b.mid;
    }
    t.gflops += 2e-9 * double(out_px) * dw_c * b.kernel * b.kernel + 2e-9 * double(out_px) * dw_c * b.out;
    ih = oh, iw = ow;
  }
  t.top_h = ih, t.top_w = iw;
  return t;
}

// Builds the packed token list from each image's selected rects (superpatch_select wrote image b's
// count[b] rects at stage + grid_offset[b]): offsets (B + 1), the total rect count, and the packed
// rects in image order. One block; B is small and the offsets are computed by thread 0.
__global__ void pack_rects_kernel(int B, int prefix, const int32_t* counts, const int32_t* grid_offset,
                                  const TokenRect* stage, TokenRect* rects, int32_t* offsets, int32_t* rect_count) {
  STEP_DYNAMIC_SMEM(int32_t, first);  // (B + 1) first packed rect of each image
  if (threadIdx.x == 0) {
    int32_t n = 0;
    offsets[0] = 0;
    for (int b = 0; b < B; ++b) first[b] = n, n += counts[b], offsets[b + 1] = n + (b + 1) * prefix;
    first[B] = n;
    *rect_count = n;
  }
  __syncthreads();
  for (int b = 0; b < B; ++b)
    for (int t = threadIdx.x; t < counts[b]; t += blockDim.x) rects[first[b] + t] = stage[grid_offset[b] + t];
}

// The per-row bookkeeping at the start of a forward, from the offsets alone: row r of image b is a
// prefix token (rect -1) or rect offsets[b] - b * prefix + (r - offsets[b] - prefix); every rect starts
// as "went through all blocks".
__global__ void init_rows_kernel(int B, int prefix, int depth, const int32_t* offsets, int32_t* rect_of_row,
                                 int32_t* rect_exit, int rows_bound) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_bound || r >= offsets[B]) return;
  int b = 0;
  while (offsets[b + 1] <= r) ++b;
  const int j = r - offsets[b];
  const int rect = j < prefix ? -1 : offsets[b] - b * prefix + (j - prefix);
  rect_of_row[r] = rect;
  if (rect >= 0) rect_exit[rect] = depth;
}

// What fixes the work of a call: sizes and settings, never pixel values (the graph key).
struct CallShape {
  int B = 0, H = 0, W = 0;
  std::vector<std::pair<int, int>> grids;
  std::vector<std::array<int, 5>> images;  // h, w, channels, out_h, out_w (segment only)
  int tp_bound = 0, a_bound = 0, max_t = 0;
  int64_t cells = 0, rgb_bytes = 0, out_pixels = 0;
  bool probs = false;
  TrunkSizes trunk;       // the largest image's, when the learned policy runs
  int64_t pooled = 0;     // (windows of the largest level grid, 320) policy head input
  std::string key() const {
    std::string k = std::to_string(B) + "x" + std::to_string(H) + "x" + std::to_string(W) + ":" +
                    std::to_string(tp_bound) + "," + std::to_string(a_bound) + "," + std::to_string(max_t) +
                    (probs ? ",p" : "");
    for (auto [h, w] : grids) k += ";" + std::to_string(h) + "," + std::to_string(w);
    for (const auto& i : images)
      for (int v : i) k += "," + std::to_string(v);
    return k;
  }
};

class CudaVitModel final : public DeviceModel {
 public:
  CudaVitModel(VitModel& model, Backend& host) : model_(model), host_(host) {
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
  ~CudaVitModel() override { release(); }

  DeviceMemoryUse memory() const override { return {weight_bytes_, workspace_.bytes()}; }
  EncoderOutput forward(const EncoderInput& in) override;
  SegmentResult segment(const SegmentRequest& r) override;

 private:
  void release() {
    if (stream_) cudaStreamSynchronize(stream_);
    drop_graphs();
    blocks_.clear(), exits_.clear(), pos_cache_.clear(), pos_bytes_.clear(), pos_used_.clear();
    workspace_.reset(), patch_w_ = {}, head_ = {}, final_norm_ = {}, norm_pre_ = {};
    prefix_tokens_.reset(), pos_prefix_.reset(), policy_.reset();
    if (start_) cudaEventDestroy(start_), start_ = nullptr;
    if (stop_) cudaEventDestroy(stop_), stop_ = nullptr;
    if (stream_) cudaStreamDestroy(stream_), stream_ = nullptr;
  }
  void drop_graphs() {
    for (auto& [k, g] : graphs_) cudaGraphExecDestroy(g);
    graphs_.clear();
  }

  DeviceBuffer upload_f32(const float* src, int64_t n, const std::string& what) {
    DeviceBuffer b(size_t(n) * 4, what);
    STEP_CUDA_CHECK(cudaMemcpy(b.as<void>(), src, size_t(n) * 4, cudaMemcpyHostToDevice));
    weight_bytes_ += b.bytes();
    return b;
  }
  DeviceBuffer upload_bf16(const float* src, int64_t n, const std::string& what) {
    std::vector<uint16_t> h(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) h[size_t(i)] = float_to_bf16(src[i]);
    DeviceBuffer b(size_t(n) * 2, what);
    STEP_CUDA_CHECK(cudaMemcpy(b.as<void>(), h.data(), size_t(n) * 2, cudaMemcpyHostToDevice));
    weight_bytes_ += b.bytes();
    return b;
  }
  Linear linear(const std::string& name, int N, int K) {
    Linear l;
    l.N = N, l.K = K;
    l.w = upload_bf16(model_.w(name + ".weight").data(), int64_t(N) * K, name + ".weight");
    if (const float* b = model_.w_or_null(name + ".bias")) l.b = upload_f32(b, N, name + ".bias");
    return l;
  }
  Norm norm(const std::string& name) {
    const int C = model_.config().embed_dim;
    return {upload_f32(model_.w(name + ".weight").data(), C, name + ".weight"),
            upload_f32(model_.w(name + ".bias").data(), C, name + ".bias")};
  }
  void upload_weights() {
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

  DeviceConv conv_weights(const EffNetTrunk& t, const std::string& name) {
    const Tensor& w = t.weight(name + ".weight");
    const Tensor& b = t.weight(name + ".bias");
    return {upload_f32(w.data(), w.numel(), "policy." + name + ".weight"), upload_f32(b.data(), b.numel(), "policy." + name + ".bias")};
  }
  Linear pointwise_weights(const EffNetTrunk& t, const std::string& name, int out_c, int in_c) {
    Linear l;
    l.N = out_c, l.K = in_c;
    l.w = upload_bf16(t.weight(name + ".weight").data(), int64_t(out_c) * in_c, "policy." + name + ".weight");
    l.b = upload_f32(t.weight(name + ".bias").data(), out_c, "policy." + name + ".bias");
    return l;
  }
  void upload_policy(const MergePolicyNet& net) {
    auto p = std::make_unique<DevicePolicy>();
    p->stem = conv_weights(net.trunk, "conv_stem");
    for (const EffNetTrunk::Block& b : EffNetTrunk::blocks()) {
      PolicyBlock pb;
      pb.dw = conv_weights(net.trunk, b.name + "conv_dw");
      if (b.separable) {
        pb.pw = pointwise_weights(net.trunk, b.name + "conv_pw", b.out, b.in);
      } else {
        pb.pw = pointwise_weights(net.trunk, b.name + "conv_pw", b.mid, b.in);
        pb.pwl = pointwise_weights(net.trunk, b.name + "conv_pwl", b.out, b.mid);
      }
      p->blocks.push_back(std::move(pb));
    }
    for (const auto& [side, w] : net.head_w) {
      Linear h;
      h.N = 1, h.K = int(w.dim(1));
      h.w = upload_bf16(w.data(), w.numel(), "policy head " + std::to_string(side));
      h.b = upload_f32(net.head_b.at(side).data(), 1, "policy head bias");
      p->heads.emplace(side, std::move(h));
    }
    policy_ = std::move(p);
  }

  // The (gh, gw, C) position embeddings of a grid on the device, uploaded on first use. Bounded like
  // the host cache (VitModel::pos_grid): evict_pos() drops the least recently used grids that the
  // current call does not use, before its copies are queued (earlier calls have synchronised).
  const float* pos_grid(int gh, int gw) {
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
  void evict_pos(const std::vector<std::pair<int, int>>& keep) {
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

  // Every device buffer of a call, carved from the workspace (carve twice: to size it, to hand out).
  struct Buffers {
    uint8_t* rgb;          // (sum of h w channels) uint8 images (segment)
    float* pixels;         // (B, 3, H, W)
    float* scores;         // (cells) window scores, image b's at grid_offset[b]
    float* score_ws;       // (4 cells) window_score workspace, image b's at 4 grid_offset[b]
    TokenRect* stage;      // (cells) each image's selected rects, image b's at grid_offset[b]
    int32_t* token_of_patch;  // (cells)
    int32_t* counts;       // (B) rects per image
    int32_t* rect_count;   // (1) rects in all
    int32_t* sizes;        // (levels) window sides
    float* thresholds;     // (levels)
    TokenRect* rects;      // (tp_bound) packed
    uint16_t* cols;        // (tp_bound, 3 P P) bf16
    float* embedded;       // (tp_bound, C)
    float* pos;            // (cells, C)
    float* x[2];           // (a_bound, C) residual stream, ping-pong over compactions
    uint16_t* h;           // (a_bound, C) bf16 LayerNorm output
    uint16_t* qkv;         // (a_bound, 3C) bf16
    uint16_t* att;         // (a_bound, C) bf16
    uint16_t* mlp;         // (a_bound, Hd) bf16
    float* tokens;         // (a_bound, C) final norm
    float* logits;         // (a_bound, K) head or exit-head logits
    uint8_t* halt;         // (a_bound)
    int32_t* rect_of_row[2];  // (a_bound)
    int32_t* src_row;      // (a_bound)
    float* rect_logits;    // (tp_bound, K)
    int32_t* rect_exit;    // (tp_bound)
    float* grid_logits;    // (cells, K)
    float* grid_flat;      // (cells, K) unshare's copy before blending
    int32_t* cell_label;   // (cells) labels for halting with agreement
    int32_t* offsets[2];   // (B + 1)
    int32_t* grid_offset;  // (B)
    int32_t* grid_w;       // (B)
    int32_t* grid_h;       // (B)
    int32_t* block_offsets;  // (depth + 1, B + 1) offsets entering each block, then after the last
    int32_t* labels;       // (out_pixels)
    float* probs;          // (K, out_pixels) when asked
    float* trunk_x;        // (H, W, 3) the policy's input, one image at a time
    float* trunk_map[2];   // trunk maps, ping-pong
    float* trunk_exp;      // expanded map
    float* trunk_mid;      // depthwise output
    uint16_t* trunk_bf16;  // a pointwise GEMM's input in bf16
    float* pooled;         // (windows, 320)
    uint16_t* pooled_bf16;
  };
  Buffers carve(const CallShape& s, char* base, size_t* bytes) const {
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
    b.sizes = v.take<int32_t>(8), b.thresholds = v.take<float>(8);
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
  Buffers workspace_for(const CallShape& s) {
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

  // The host part of every call: grids, grid offsets, bounds.
  CallShape shape_of(int B, int H, int W, const std::vector<std::pair<int, int>>& grids, std::vector<int32_t>* grid_offset,
                     std::vector<int32_t>* grid_w) const {
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

  // The learned policy's window scores of one image (levels concatenated at `scores`), on the device.
  void policy_scores(const Buffers& w, const uint8_t* rgb, int h, int wd, int channels, int gh, int gw,
                     const std::vector<int32_t>& sizes, float* scores);

  // Image b's position embeddings into w.pos at cell grid_offset[b] (device to device, from the cache).
  void copy_pos(const Buffers& w, const std::vector<std::pair<int, int>>& grids, const std::vector<int32_t>& grid_offset);
  // Synchronises the call, then the block-group timings from the events encode recorded (eager runs)
  // into st.ms, destroying them; `last` is the end of the last group, `total_ms` start_ to stop_.
  // A failed call throws (naming `what`) after the events are gone.
  void finish(const std::vector<cudaEvent_t>& events, const std::vector<std::string>& names, const char* what,
              ForwardStats& st, float* last, float* total_ms);

  // The encoder and head over the packed list already on the device (rects, offsets[0], rect_count,
  // grid_offset, grid_w, pos): every count read on the device, every grid sized by the bounds.
  // Records group events unless `graph` (events are not captured). No host synchronisation.
  void encode(const CallShape& s, Buffers& w, const std::vector<int>& exit_layers, const PruneSettings& prune, UnshareMode unshare_mode,
              bool graph, std::vector<cudaEvent_t>* group_events, std::vector<std::string>* group_names);

  // Runs `body` (kernels only, on stream_) as a CUDA graph cached under `key`, or directly.
  template <typename Body>
  bool launch(const std::string& key, Body body) {
    if (!use_graphs_) {
      body(false);
      return false;
    }
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (graphs_.size() >= 16) drop_graphs();
      cudaGraph_t graph = nullptr;
      STEP_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        body(true);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        throw;
      }
      STEP_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      if (err != cudaSuccess) {  // graphs unusable here: run directly from now on
        cudaGetLastError();
        use_graphs_ = false;
        body(false);
        return false;
      }
      it = graphs_.emplace(key, exec).first;
    }
    STEP_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    return true;
  }

  // Stats from the offsets each block saw (downloaded), as the CPU computes them.
  void fill_stats(const CallShape& s, const std::vector<int32_t>& block_offsets, const std::vector<int>& exit_layers,
                  int64_t rects, EncoderOutput& out) const;

  VitModel& model_;
  Backend& host_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  bool use_graphs_ = true;
  size_t weight_bytes_ = 0;
  Linear patch_w_, head_;
  Norm norm_pre_, final_norm_;
  DeviceBuffer prefix_tokens_, pos_prefix_;
  std::vector<Block> blocks_;
  std::map<int, ExitHead> exits_;
  std::map<std::pair<int, int>, DeviceBuffer> pos_cache_;
  std::map<std::pair<int, int>, size_t> pos_bytes_;
  std::map<std::pair<int, int>, uint64_t> pos_used_;
  uint64_t pos_clock_ = 0;
  std::map<std::string, cudaGraphExec_t> graphs_;
  std::unique_ptr<DevicePolicy> policy_;
  DeviceBuffer workspace_;
};

void CudaVitModel::policy_scores(const Buffers& w, const uint8_t* rgb, int h, int wd, int channels, int gh, int gw,
                                 const std::vector<int32_t>& sizes, float* scores) {
  using T = EffNetTrunk;
  const int P = model_.config().patch, H = gh * P, W = gw * P;
  cudaStream_t s = stream_;
  {
    ImageNormalizeParams n;
    n.src = rgb, n.h = h, n.w = wd, n.channels = channels;
    for (int q = 0; q < 3; ++q) n.mean[q] = 127.5f, n.std[q] = 127.5f;
    n.out_h = H, n.out_w = W, n.channels_last = true, n.out = w.trunk_x;
    image_normalize(n, s);
  }
  auto conv_run = [&](const float* x, int ih, int iw, int in_c, const DeviceConv& cw, int out_c, int kernel, int stride,
                      bool depthwise, float* y) {
    ConvParams c;
    c.batch = 1, c.in_h = ih, c.in_w = iw, c.in_c = in_c;
    c.out_h = T::conv_out(ih, kernel, stride), c.out_w = T::conv_out(iw, kernel, stride), c.out_c = out_c;
    c.kernel = kernel, c.stride = stride, c.pad = (kernel - 1) / 2, c.groups = depthwise ? in_c : 1;
    c.x = x, c.w = cw.w.as<float>(), c.bias = cw.b.as<float>(), c.act = Activation::kRelu6, c.y = y;
    conv(c, s);
  };
  auto pointwise = [&](const float* x, int64_t rows, const Linear& l, Epilogue ep, const float* residual, float* y) {
    convert_to_bf16(x, w.trunk_bf16, rows * l.K, s);
    GemmParams g;
    g.M = int(rows), g.N = l.N, g.K = l.K, g.lda = l.K, g.ldc = l.N, g.bias = l.b.as<float>(), g.epilogue = ep;
    g.residual = residual, g.c = y;
    GemmDeviceExtras x_;
    x_.a_bf16 = w.trunk_bf16, x_.w_bf16 = l.w.as<uint16_t>();
    gemm(g, x_, s);
  };
  int ih = T::conv_out(H, 3, 2), iw = T::conv_out(W, 3, 2);
  conv_run(w.trunk_x, H, W, 3, policy_->stem, T::kStemChannels, 3, 2, false, w.trunk_map[0]);
  int cur = 0;
  const auto& specs = T::blocks();
  for (size_t i = 0; i < specs.size(); ++i) {
    const T::Block& b = specs[i];
    const PolicyBlock& pb = policy_->blocks[i];
    const int oh = T::conv_out(ih, b.kernel, b.stride), ow = T::conv_out(iw, b.kernel, b.stride);
    float* in = w.trunk_map[cur];
    float* out = w.trunk_map[1 - cur];
    const Epilogue project = b.skip ? Epilogue::kResidual : Epilogue::kNone;
    if (b.separable) {
      conv_run(in, ih, iw, b.in, pb.dw, b.in, b.kernel, b.stride, true, w.trunk_mid);
      pointwise(w.trunk_mid, int64_t(oh) * ow, pb.pw, project, b.skip ? in : nullptr, out);
    } else {
      pointwise(in, int64_t(ih) * iw, pb.pw, Epilogue::kRelu6, nullptr, w.trunk_exp);
      conv_run(w.trunk_exp, ih, iw, b.mid, pb.dw, b.mid, b.kernel, b.stride, true, w.trunk_mid);
      pointwise(w.trunk_mid, int64_t(oh) * ow, pb.pwl, project, b.skip ? in : nullptr, out);
    }
    cur = 1 - cur, ih = oh, iw = ow;
  }
  const float* top = w.trunk_map[cur];  // (ih, iw, 320) stride 32
  for (int32_t S : sizes) {
    const int factor = S * P / 32, wh = gh / S, ww = gw / S;
    auto head = policy_->heads.find(S);
    if (head == policy_->heads.end())
      throw Error(ErrorCode::kBadInput, "the learned policy has no head for windows of " + std::to_string(S) +
                                            " patches: use the levels of the model's merge config");
    if (wh * ww > 0) {
      AvgPoolParams ap;
      ap.in_h = ih, ap.in_w = iw, ap.C = 320, ap.factor = factor, ap.out_h = wh, ap.out_w = ww;
      ap.x = top, ap.y = w.pooled;
      avg_pool(ap, s);
      convert_to_bf16(w.pooled, w.pooled_bf16, int64_t(wh) * ww * 320, s);
      GemmParams g;
      g.M = wh * ww, g.N = 1, g.K = 320, g.lda = 320, g.ldc = 1, g.bias = head->second.b.as<float>();
      g.epilogue = Epilogue::kSigmoid, g.c = scores;
      GemmDeviceExtras x_;
      x_.a_bf16 = w.pooled_bf16, x_.w_bf16 = head->second.w.as<uint16_t>();
      gemm(g, x_, s);
    }
    scores += int64_t(wh) * ww;
  }
}

void CudaVitModel::encode(const CallShape& sh, Buffers& w, const std::vector<int>& exit_layers,
                          const PruneSettings& prune, UnshareMode unshare_mode, bool graph, std::vector<cudaEvent_t>* group_events,
                          std::vector<std::string>* group_names) {
  const VitConfig& c = model_.config();
  const int B = sh.B, C = c.embed_dim, P = c.patch, pre = c.prefix(), K = c.num_classes;
  const int Tp = sh.tp_bound, A0 = sh.a_bound, max_t = sh.max_t;
  cudaStream_t s = stream_;
  auto group_done = [&](std::string name) {
    if (graph) return;
    cudaEvent_t ev;
    STEP_CUDA_CHECK(cudaEventCreate(&ev));
    group_events->push_back(ev);
    STEP_CUDA_CHECK(cudaEventRecord(ev, s));
    group_names->push_back(std::move(name));
  };

  if (A0 > 0) {
    cuda::launch<init_rows_kernel>(ceil_div(A0, 256), 256, 0, s, B, pre, c.depth, w.offsets[0], w.rect_of_row[0], w.rect_exit, A0);
    STEP_CUDA_CHECK_LAUNCH();
  }
  // Patch embedding: im2col of every rect (bf16), one GEMM with the conv weight.
  {
    PatchGatherParams g;
    g.images = B, g.height = sh.H, g.width = sh.W, g.patch = P, g.pixels = w.pixels;
    g.tokens = Tp, g.rects = w.rects;
    PatchGatherDeviceExtras x;
    x.out_bf16 = w.cols, x.tokens_device = w.rect_count;
    patch_gather(g, x, s);
  }
  auto gemm_run = [&](const Linear& l, const uint16_t* a, int M, const int32_t* m_device, float* c_f32, uint16_t* c_bf16,
                      Epilogue ep, const float* scale) {
    GemmParams g;
    g.M = M, g.N = l.N, g.K = l.K, g.lda = l.K, g.ldc = l.N, g.bias = l.b.as<float>(), g.epilogue = ep;
    g.residual = ep == Epilogue::kResidual ? c_f32 : nullptr, g.col_scale = scale, g.c = c_f32;
    GemmDeviceExtras x;
    x.a_bf16 = a, x.w_bf16 = l.w.as<uint16_t>(), x.c_bf16 = c_bf16, x.m_device = m_device;
    gemm(g, x, s);
  };
  gemm_run(patch_w_, w.cols, Tp, w.rect_count, w.embedded, nullptr, Epilogue::kNone, nullptr);

  int cur = 0;  // which offsets / rect_of_row buffer holds the live list
  float* x = w.x[0];
  {
    TokenPosEmbedParams t;
    t.batch = B, t.C = C, t.prefix = pre, t.prefix_tokens = prefix_tokens_.as<float>();
    t.pos_prefix = pos_prefix_.as<float>(), t.pos_grid = w.pos, t.grid_offset = w.grid_offset, t.grid_w = w.grid_w;
    t.offsets = w.offsets[0], t.rects = w.rects, t.embedded = w.embedded, t.out = x;
    TokenPosEmbedDeviceExtras e;
    e.rows_bound = A0;
    token_pos_embed(t, e, s);
  }
  auto layernorm_run = [&](const float* src, const Norm& n, float* y, uint16_t* y_bf16) {
    LayerNormParams p;
    p.rows = A0, p.C = C, p.eps = c.norm_eps, p.x = src, p.gamma = n.gamma.as<float>(), p.beta = n.beta.as<float>();
    p.y = y;
    LayerNormDeviceExtras e;
    e.rows_device = w.offsets[cur] + B, e.y_bf16 = y_bf16;
    layernorm(p, e, s);
  };
  if (c.pre_norm) {  // into the other stream buffer (LayerNorm does not run in place)
    layernorm_run(x, norm_pre_, w.x[1], nullptr);
    x = w.x[1];
  }
  auto snapshot_offsets = [&](int i) {
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.block_offsets + int64_t(i) * (B + 1), w.offsets[cur], size_t(B + 1) * 4,
                                    cudaMemcpyDeviceToDevice, s));
  };
  int group_start = 0;
  for (int i = 0; i < c.depth; ++i) {
    const Block& blk = blocks_[size_t(i)];
    const int32_t* rows = w.offsets[cur] + B;
    snapshot_offsets(i);
    layernorm_run(x, blk.norm1, nullptr, w.h);
    gemm_run(blk.qkv, w.h, A0, rows, nullptr, w.qkv, Epilogue::kNone, nullptr);
    {
      AttentionParams p;
      p.batch = B, p.offsets = w.offsets[cur], p.heads = c.heads, p.head_dim = C / c.heads;
      p.scale = 1.f / std::sqrt(float(C / c.heads));
      AttentionDeviceExtras e;
      e.max_seqlen = max_t, e.qkv_bf16 = w.qkv, e.out_bf16 = w.att;
      attention(p, e, s);
    }
    gemm_run(blk.proj, w.att, A0, rows, x, nullptr, Epilogue::kResidual, blk.ls1.as<float>());
    layernorm_run(x, blk.norm2, nullptr, w.h);
    gemm_run(blk.fc1, w.h, A0, rows, nullptr, w.mlp, Epilogue::kGelu, nullptr);
    gemm_run(blk.fc2, w.mlp, A0, rows, x, nullptr, Epilogue::kResidual, blk.ls2.as<float>());

    if (std::find(exit_layers.begin(), exit_layers.end(), i + 1) == exit_layers.end()) continue;
    auto eh = exits_.find(i + 1);
    STEP_CHECK(eh != exits_.end(), "exit head " + std::to_string(i + 1) + " not uploaded");
    NvtxRange range_exit(("exit " + std::to_string(i + 1)).c_str());
    layernorm_run(x, eh->second.norm, nullptr, w.h);
    gemm_run(eh->second.head, w.h, A0, rows, w.logits, nullptr, Epilogue::kNone, nullptr);
    {
      TokenHaltParams p;
      p.batch = B, p.K = K, p.prefix = pre, p.offsets = w.offsets[cur], p.logits = w.logits;
      p.threshold = prune.threshold, p.top_k = prune.top_k, p.halt = w.halt;
      if (prune.agree == 1) {
        p.rect_of_row = w.rect_of_row[cur], p.rects = w.rects, p.grid_offset = w.grid_offset;
        p.grid_h = w.grid_h, p.grid_w = w.grid_w, p.cell_label = w.cell_label;
      }
      TokenHaltDeviceExtras e;
      e.max_seqlen = max_t;
      token_halt(p, e, s);
    }
    {
      TokenScatterParams p;
      p.rows = A0, p.K = K, p.src = w.logits, p.index = w.rect_of_row[cur], p.mask = w.halt, p.table = w.rect_logits;
      TokenScatterDeviceExtras e;
      e.rows_device = rows;
      token_scatter(p, e, s);
    }
    if (A0 > 0) {
      cuda::launch<mark_exits_kernel>(ceil_div(A0, 256), 256, 0, s, rows, w.halt, w.rect_of_row[cur], i + 1, w.rect_exit, A0);
      STEP_CUDA_CHECK_LAUNCH();
    }
    const int nxt = 1 - cur;
    float* x_next = x == w.x[0] ? w.x[1] : w.x[0];
    {
      TokenCompactParams p;
      p.batch = B, p.C = C, p.offsets = w.offsets[cur], p.halt = w.halt, p.x = x, p.out = x_next;
      p.new_offsets = w.offsets[nxt], p.src_row = w.src_row;
      TokenCompactDeviceExtras e;
      e.rows_bound = A0;
      token_compact(p, e, s);
    }
    if (A0 > 0) {
      cuda::launch<gather_int_kernel>(ceil_div(A0, 256), 256, 0, s, w.offsets[nxt] + B, w.src_row, w.rect_of_row[cur],
                                                          w.rect_of_row[nxt], A0);
      STEP_CUDA_CHECK_LAUNCH();
    }
    cur = nxt, x = x_next;
    group_done("blocks " + std::to_string(group_start) + "-" + std::to_string(i));
    group_start = i + 1;
  }
  snapshot_offsets(c.depth);
  layernorm_run(x, final_norm_, w.tokens, w.h);
  group_done(group_start == 0 ? "encoder" : "blocks " + std::to_string(group_start) + "-" + std::to_string(c.depth - 1));
  // Head on the live rows, filing under each rect, unsharing to the patch grids.
  if (K > 0) {
    NvtxRange range_head("head");
    const int32_t* rows = w.offsets[cur] + B;
    gemm_run(head_, w.h, A0, rows, w.logits, nullptr, Epilogue::kNone, nullptr);
    TokenScatterParams sc;
    sc.rows = A0, sc.K = K, sc.src = w.logits, sc.index = w.rect_of_row[cur], sc.table = w.rect_logits;
    TokenScatterDeviceExtras se;
    se.rows_device = rows;
    token_scatter(sc, se, s);
    UnshareParams u;
    u.K = K, u.tokens = Tp, u.rects = w.rects, u.logits = w.rect_logits;
    u.grid_offset = w.grid_offset, u.grid_w = w.grid_w, u.grid = w.grid_logits;
    u.mode = unshare_mode, u.grid_h = w.grid_h, u.flat = w.grid_flat;
    UnshareDeviceExtras ue;
    ue.tokens_device = w.rect_count;
    unshare(u, ue, s);
  }
  // The final offsets, for the host: in offsets[0] whatever buffer holds them.
  if (cur != 0)
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.offsets[0], w.offsets[cur], size_t(B + 1) * 4, cudaMemcpyDeviceToDevice, s));
}

void CudaVitModel::fill_stats(const CallShape& sh, const std::vector<int32_t>& block_offsets,
                              const std::vector<int>& exit_layers, int64_t rects, EncoderOutput& out) const {
  const VitConfig& c = model_.config();
  const int B = sh.B, C = c.embed_dim, P = c.patch, K = c.num_classes;
  ForwardStats& st = out.stats;
  auto gemm_gflops = [](int64_t M, int64_t N, int64_t Kd) { return 2e-9 * double(M) * N * Kd; };
  st.dense_tokens = sh.cells + int64_t(B) * c.prefix();
  st.input_tokens = block_offsets[B];
  st.gflops += gemm_gflops(rects, C, 3 * P * P);
  for (int i = 0; i <= c.depth; ++i) {
    const int32_t* o = block_offsets.data() + size_t(i) * (B + 1);
    const int64_t a = o[B];
    if (i == c.depth) {
      out.offsets.assign(o, o + B + 1);
      if (K > 0) st.gflops += gemm_gflops(a, K, C);
      break;
    }
    st.per_block.push_back(a);
    int64_t sum_t2 = 0;
    for (int b = 0; b < B; ++b) sum_t2 += int64_t(o[b + 1] - o[b]) * (o[b + 1] - o[b]);
    st.gflops += gemm_gflops(a, 3 * C, C) + 4e-9 * double(sum_t2) * C + gemm_gflops(a, C, C) +
                 2 * gemm_gflops(a, c.mlp_hidden, C);
    if (std::find(exit_layers.begin(), exit_layers.end(), i + 1) != exit_layers.end()) {
      st.gflops += gemm_gflops(a, K, C);
      int64_t halted = 0;
      for (int64_t t = 0; t < rects; ++t) halted += out.rect_exit[size_t(t)] == i + 1;
      st.halted.push_back(halted);
    }
  }
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

EncoderOutput CudaVitModel::forward(const EncoderInput& in) {
  using clock = std::chrono::steady_clock;
  const VitConfig& c = model_.config();
  const int B = in.images, C = c.embed_dim, pre = c.prefix(), K = c.num_classes;
  auto t0 = clock::now();
  NvtxRange range_forward("forward");
  cudaStream_t s = stream_;
  EncoderOutput out;

  std::vector<int32_t> grid_w;
  CallShape sh = shape_of(B, in.height, in.width, in.grids, &out.grid_offset, &grid_w);
  // Rects from the host (dense when none given); exact bounds.
  std::vector<TokenRect> rects = in.rects;
  if (rects.empty())
    for (int b = 0; b < B; ++b)
      for (int r = 0; r < in.grids[b].first; ++r)
        for (int col = 0; col < in.grids[b].second; ++col) rects.push_back({b, r, col, 1});
  std::vector<int32_t> offsets(B + 1, 0);
  int max_t = 0;
  {
    size_t j = 0;
    for (int b = 0; b < B; ++b) {
      int n = 0;
      while (j < rects.size() && rects[j].image == b) ++j, ++n;
      offsets[b + 1] = offsets[b] + pre + n;
      max_t = std::max(max_t, pre + n);
    }
  }
  const int32_t Tp = int32_t(rects.size());
  sh.tp_bound = Tp, sh.a_bound = offsets[B], sh.max_t = max_t;
  std::vector<int> exit_layers = in.prune.enabled ? in.prune.layers : std::vector<int>{};
  if (!exit_layers.empty() && max_t > token_halt_max_rows())
    throw Error(ErrorCode::kBadInput, "early exits on the GPU handle at most " + std::to_string(token_halt_max_rows()) +
                                          " tokens per image and this image has " + std::to_string(max_t) +
                                          ": use a smaller input size, merging, prune: false or device 'cpu'");
  Buffers w = workspace_for(sh);

  STEP_CUDA_CHECK(cudaEventRecord(start_, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.pixels, in.pixels, size_t(B) * 3 * in.height * in.width * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.rects, rects.data(), size_t(Tp) * sizeof(TokenRect), cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.rect_count, &Tp, 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.offsets[0], offsets.data(), size_t(B + 1) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_offset, out.grid_offset.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_w, grid_w.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  std::vector<int32_t> grid_h(B);
  for (int b = 0; b < B; ++b) grid_h[b] = in.grids[b].first;
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_h, grid_h.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  copy_pos(w, in.grids, out.grid_offset);
  std::vector<cudaEvent_t> events;
  std::vector<std::string> names;
  encode(sh, w, exit_layers, in.prune, in.unshare, false, &events, &names);
  STEP_CUDA_CHECK(cudaEventRecord(stop_, s));

  std::vector<int32_t> block_offsets(size_t(c.depth + 1) * (B + 1));
  STEP_CUDA_CHECK(cudaMemcpyAsync(block_offsets.data(), w.block_offsets, block_offsets.size() * 4, cudaMemcpyDeviceToHost, s));
  out.rect_exit.resize(Tp);
  STEP_CUDA_CHECK(cudaMemcpyAsync(out.rect_exit.data(), w.rect_exit, size_t(Tp) * 4, cudaMemcpyDeviceToHost, s));
  if (K > 0) {
    out.grid_logits.reset({sh.cells, K});
    STEP_CUDA_CHECK(cudaMemcpyAsync(out.grid_logits.data(), w.grid_logits, size_t(sh.cells) * K * 4, cudaMemcpyDeviceToHost, s));
  }
  Tensor tokens;
  if (in.want_tokens || in.capture) {
    tokens.reset({sh.a_bound, C});
    STEP_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), w.tokens, size_t(sh.a_bound) * C * 4, cudaMemcpyDeviceToHost, s));
  }
  float last = 0, total_ms = 0;
  finish(events, names, "the GPU forward", out.stats, &last, &total_ms);
  fill_stats(sh, block_offsets, exit_layers, Tp, out);
  const int A = out.offsets[B];
  if (in.want_tokens || in.capture) {
    out.tokens.reset({A, C});
    std::memcpy(out.tokens.data(), tokens.data(), size_t(A) * C * 4);
    if (in.capture) {
      Tensor copy({A, C});
      std::memcpy(copy.data(), out.tokens.data(), size_t(A) * C * 4);
      out.captured.emplace_back("final_norm", std::move(copy));
    }
  }
  const double host_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  out.stats.ms.emplace_back("head (gpu)", std::max(0.f, total_ms - last));
  out.stats.ms.emplace_back("host + transfers", std::max(0.0, host_ms - total_ms));
  return out;
}

DeviceModel::SegmentResult CudaVitModel::segment(const SegmentRequest& r) {
  using clock = std::chrono::steady_clock;
  const VitConfig& c = model_.config();
  const int B = int(r.images.size()), P = c.patch, K = c.num_classes;
  STEP_CHECK(K > 0, "segment needs a segmentation head");
  auto t0 = clock::now();
  NvtxRange range_segment("segment");
  cudaStream_t s = stream_;
  SegmentResult res;
  EncoderOutput& out = res.enc;

  // Shape: each image's grid over the batch's padded size, dense bounds, uploads' sizes.
  std::vector<std::pair<int, int>> grids;
  int H = 0, W = 0;
  for (const Image& im : r.images) {
    grids.push_back({(im.h + P - 1) / P, (im.w + P - 1) / P});
    H = std::max(H, grids.back().first * P), W = std::max(W, grids.back().second * P);
  }
  std::vector<int32_t> grid_w;
  CallShape sh = shape_of(B, H, W, grids, &out.grid_offset, &grid_w);
  const bool learned = r.merge.policy == MergePolicy::kLearned;
  if (learned && !policy_)
    throw Error(ErrorCode::kBadModel, "the learned merge policy needs policy weights (policy.trunk.*, policy.heads.*), "
                                      "which this model does not have: use policy 'similarity'");
  const int levels = r.merge.policy != MergePolicy::kNone ? int(r.merge.sizes.size()) : 0;
  double policy_gflops = 0;
  if (learned) {
    for (const auto& [gh, gw] : grids) {
      const TrunkSizes t = trunk_sizes(gh * P, gw * P);
      sh.trunk.map = std::max(sh.trunk.map, t.map), sh.trunk.expanded = std::max(sh.trunk.expanded, t.expanded);
      sh.trunk.mid = std::max(sh.trunk.mid, t.mid), sh.trunk.bf16 = std::max(sh.trunk.bf16, t.bf16);
      policy_gflops += t.gflops;
      for (int32_t S : r.merge.sizes) {
        sh.pooled = std::max<int64_t>(sh.pooled, int64_t(gh / S) * (gw / S) * 320);
        policy_gflops += 2e-9 * double(gh / S) * (gw / S) * 320;
      }
    }
  }
  STEP_CHECK(levels <= 8, "at most 8 merge levels");
  std::vector<int64_t> rgb_at(B), out_at(B + 1, 0);
  for (int b = 0; b < B; ++b) {
    const Image& im = r.images[b];
    rgb_at[b] = sh.rgb_bytes;
    sh.rgb_bytes += (int64_t(im.h) * im.w * im.channels + 15) / 16 * 16;
    out_at[b + 1] = out_at[b] + int64_t(im.out_h) * im.out_w;
    sh.images.push_back({im.h, im.w, im.channels, im.out_h, im.out_w});
  }
  sh.out_pixels = out_at[B], sh.probs = r.want_probs;
  std::vector<int> exit_layers = r.prune.enabled ? r.prune.layers : std::vector<int>{};
  if (!exit_layers.empty() && sh.max_t > token_halt_max_rows())
    throw Error(ErrorCode::kBadInput, "early exits on the GPU handle at most " + std::to_string(token_halt_max_rows()) +
                                          " tokens per image and this image has up to " + std::to_string(sh.max_t) +
                                          ": use a smaller input size, prune: false or device 'cpu'");
  // Settings baked into the kernels' arguments belong in the graph key too.
  std::string key = sh.key() + "|L" + std::to_string(levels) + (learned ? "learned" : "");
  for (int l = 0; l < levels; ++l) key += "," + std::to_string(r.merge.sizes[l]);
  if (levels) key += "|tau" + std::to_string(r.merge.color_tau) + "," + std::to_string(r.merge.texture_tau);
  if (levels && r.merge.unshare == UnshareMode::kBlend) key += "|blend";
  for (int e : exit_layers) key += "|x" + std::to_string(e);
  if (!exit_layers.empty()) key += "|t" + std::to_string(r.prune.threshold) + ",k" + std::to_string(r.prune.top_k) + ",a" + std::to_string(r.prune.agree);
  for (int q = 0; q < 3; ++q) key += "|n" + std::to_string(r.mean[q]) + "," + std::to_string(r.std[q]);

  Buffers w = workspace_for(sh);
  // Uploads (outside the graph): images, grids, merge settings, position embeddings.
  STEP_CUDA_CHECK(cudaEventRecord(start_, s));
  for (int b = 0; b < B; ++b) {
    const Image& im = r.images[b];
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.rgb + rgb_at[b], im.rgb, size_t(im.h) * im.w * im.channels, cudaMemcpyHostToDevice, s));
  }
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_offset, out.grid_offset.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_w, grid_w.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  if (levels) {
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.sizes, r.merge.sizes.data(), size_t(levels) * 4, cudaMemcpyHostToDevice, s));
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.thresholds, r.merge.thresholds.data(), size_t(levels) * 4, cudaMemcpyHostToDevice, s));
  }
  std::vector<int32_t> grid_h(B);
  for (int b = 0; b < B; ++b) grid_h[b] = grids[b].first;
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_h, grid_h.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  copy_pos(w, grids, out.grid_offset);

  std::vector<cudaEvent_t> events;
  std::vector<std::string> names;
  auto body = [&](bool graph) {
    // Normalise each image into its plane of the padded batch, score and select on the device.
    for (int b = 0; b < B; ++b) {
      const Image& im = r.images[b];
      ImageNormalizeParams n;
      n.src = w.rgb + rgb_at[b], n.h = im.h, n.w = im.w, n.channels = im.channels;
      for (int q = 0; q < 3; ++q) n.mean[q] = r.mean[q], n.std[q] = r.std[q];
      n.out_h = H, n.out_w = W, n.out = w.pixels + int64_t(b) * 3 * H * W;
      image_normalize(n, s);
      const int64_t at = out.grid_offset[b];
      if (learned) {
        policy_scores(w, w.rgb + rgb_at[b], im.h, im.w, im.channels, grids[b].first, grids[b].second, r.merge.sizes,
                      w.scores + at);
      } else if (levels) {
        WindowScoreParams ws;
        ws.image = w.rgb + rgb_at[b], ws.h = im.h, ws.w = im.w, ws.channels = im.channels, ws.patch = P;
        ws.gh = grids[b].first, ws.gw = grids[b].second, ws.levels = levels, ws.sizes = w.sizes;
        ws.color_tau = r.merge.color_tau, ws.texture_tau = r.merge.texture_tau, ws.scores = w.scores + at;
        WindowScoreDeviceExtras wx;
        wx.workspace = w.score_ws + 4 * at;
        window_score(ws, wx, s);
      }
      SuperpatchSelectParams sp;
      sp.image = b, sp.gh = grids[b].first, sp.gw = grids[b].second, sp.levels = levels;
      sp.sizes = w.sizes, sp.thresholds = w.thresholds, sp.scores = w.scores + at;
      sp.rects = w.stage + at, sp.count = w.counts + b, sp.token_of_patch = w.token_of_patch + at;
      superpatch_select(sp, s);
    }
    {
      cuda::launch<pack_rects_kernel>(1, 256, size_t(B + 1) * 4, s, B, c.prefix(), w.counts, w.grid_offset, w.stage, w.rects,
                                                          w.offsets[0], w.rect_count);
      STEP_CUDA_CHECK_LAUNCH();
    }
    encode(sh, w, exit_layers, r.prune, levels ? r.merge.unshare : UnshareMode::kCopy, graph, &events, &names);
    for (int b = 0; b < B; ++b) {
      const Image& im = r.images[b];
      UpsampleParams u;
      u.K = K, u.gh = grids[b].first, u.gw = grids[b].second, u.patch = P;
      u.logits = w.grid_logits + int64_t(out.grid_offset[b]) * K;
      u.valid_h = im.h, u.valid_w = im.w, u.out_h = im.out_h, u.out_w = im.out_w;
      u.labels = w.labels + out_at[b], u.probs = r.want_probs ? w.probs + int64_t(K) * out_at[b] : nullptr;
      upsample(u, s);
    }
  };
  res.graph = launch(key, body);
  STEP_CUDA_CHECK(cudaEventRecord(stop_, s));

  // Downloads: bookkeeping (small), labels, and what was asked for.
  std::vector<int32_t> block_offsets(size_t(c.depth + 1) * (B + 1)), counts(B);
  STEP_CUDA_CHECK(cudaMemcpyAsync(block_offsets.data(), w.block_offsets, block_offsets.size() * 4, cudaMemcpyDeviceToHost, s));
  std::vector<int32_t> rect_exit(sh.tp_bound);
  STEP_CUDA_CHECK(cudaMemcpyAsync(rect_exit.data(), w.rect_exit, rect_exit.size() * 4, cudaMemcpyDeviceToHost, s));
  std::vector<TokenRect> rects;
  std::vector<int32_t> token_of_patch;
  STEP_CUDA_CHECK(cudaMemcpyAsync(counts.data(), w.counts, size_t(B) * 4, cudaMemcpyDeviceToHost, s));
  rects.resize(size_t(sh.tp_bound));
  STEP_CUDA_CHECK(cudaMemcpyAsync(rects.data(), w.rects, rects.size() * sizeof(TokenRect), cudaMemcpyDeviceToHost, s));
  token_of_patch.resize(size_t(sh.cells));
  STEP_CUDA_CHECK(cudaMemcpyAsync(token_of_patch.data(), w.token_of_patch, token_of_patch.size() * 4, cudaMemcpyDeviceToHost, s));
  res.labels.resize(B);
  for (int b = 0; b < B; ++b) {
    res.labels[b].resize(size_t(out_at[b + 1] - out_at[b]));
    STEP_CUDA_CHECK(cudaMemcpyAsync(res.labels[b].data(), w.labels + out_at[b], res.labels[b].size() * 4, cudaMemcpyDeviceToHost, s));
  }
  if (r.want_probs) {
    res.probs.resize(B);
    for (int b = 0; b < B; ++b) {
      res.probs[b].resize(size_t(K) * (out_at[b + 1] - out_at[b]));
      STEP_CUDA_CHECK(cudaMemcpyAsync(res.probs[b].data(), w.probs + int64_t(K) * out_at[b], res.probs[b].size() * 4,
                                      cudaMemcpyDeviceToHost, s));
    }
  }
  if (r.want_logits) {
    out.grid_logits.reset({sh.cells, K});
    STEP_CUDA_CHECK(cudaMemcpyAsync(out.grid_logits.data(), w.grid_logits, size_t(sh.cells) * K * 4, cudaMemcpyDeviceToHost, s));
  }
  float last = 0, total_ms = 0;
  finish(events, names, "the GPU segment", out.stats, &last, &total_ms);

  // The plan as the host's MergePlan: rects in image order, token_of_patch per image, tokens per size.
  int64_t n = 0;
  for (int b = 0; b < B; ++b) n += counts[b];
  rects.resize(size_t(n));
  res.plan.rects = std::move(rects);
  int64_t first = 0;
  for (int b = 0; b < B; ++b) {
    const int64_t at = out.grid_offset[b], cells = int64_t(grids[b].first) * grids[b].second;
    res.plan.token_of_patch.emplace_back(token_of_patch.begin() + at, token_of_patch.begin() + at + cells);
    std::vector<int64_t> per_size(size_t(levels) + 1, 0);
    for (int64_t t = first; t < first + counts[b]; ++t) {
      int l = 0;
      while (l < levels && r.merge.sizes[l] != res.plan.rects[size_t(t)].size) ++l;
      ++per_size[size_t(l)];
    }
    res.plan.tokens_per_size.push_back(std::move(per_size));
    first += counts[b];
  }
  const int64_t Tp = int64_t(res.plan.rects.size());
  rect_exit.resize(size_t(Tp));
  out.rect_exit = std::move(rect_exit);
  fill_stats(sh, block_offsets, exit_layers, Tp, out);
  out.stats.gflops += policy_gflops;
  res.plan.gflops = policy_gflops;
  const double host_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  if (res.graph) out.stats.ms.emplace_back("graph (gpu)", total_ms);
  else out.stats.ms.emplace_back("head + upsample (gpu)", std::max(0.f, total_ms - last));
  out.stats.ms.emplace_back("host + transfers", std::max(0.0, host_ms - total_ms));
  return res;
}

}  // namespace

std::unique_ptr<DeviceModel> DeviceModel::create(VitModel& model, Backend& host) {
  return std::make_unique<CudaVitModel>(model, host);
}

DeviceMemoryInfo device_memory_info() {
  if (!probe_cuda().usable) return {};
  DeviceMemoryInfo m;
  STEP_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  return m;
}

}  // namespace step::cuda
