// device_model.cu: the GPU forward of a ViT segmentation model (see device_model.h). One backend call
// of model.cpp is one kernel entry of cuda_ops.h here, in the same order, so the two read side by side.
#include "device_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../core/device.h"
#include "common.cuh"
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

__global__ void fill_int_kernel(int32_t* out, int32_t value, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
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

// The sizes that fix the workspace layout of a forward.
struct Shape {
  int B = 0, H = 0, W = 0, Tp = 0, A = 0, cells = 0;
};

class CudaVitModel final : public DeviceModel {
 public:
  CudaVitModel(VitModel& model, Backend& host) : model_(model), host_(host) {
    const DeviceProbe& probe = probe_cuda();
    if (!probe.usable)
      throw Error(ErrorCode::kDeviceUnavailable, "the GPU cannot be used: " + probe.reason);
    STEP_CUDA_CHECK(cudaSetDevice(0));
    STEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      upload_weights();
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

 private:
  void release() {
    if (stream_) cudaStreamSynchronize(stream_);
    blocks_.clear(), exits_.clear(), pos_cache_.clear();
    workspace_.reset(), patch_w_ = {}, head_ = {}, final_norm_ = {}, norm_pre_ = {};
    prefix_tokens_.reset(), pos_prefix_.reset();
    if (start_) cudaEventDestroy(start_), start_ = nullptr;
    if (stop_) cudaEventDestroy(stop_), stop_ = nullptr;
    if (stream_) cudaStreamDestroy(stream_), stream_ = nullptr;
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

  // The (gh, gw, C) position embeddings of a grid on the device, uploaded on first use.
  const float* pos_grid(int gh, int gw) {
    auto key = std::make_pair(gh, gw);
    auto it = pos_cache_.find(key);
    if (it == pos_cache_.end()) {
      const Tensor& g = model_.pos_grid(host_, gh, gw);
      it = pos_cache_.emplace(key, upload_f32(g.data(), g.numel(), "position embeddings")).first;
    }
    return it->second.as<float>();
  }

  // The workspace for a forward of this shape: carved twice, once to size it, once to hand out.
  struct Buffers {
    float* pixels;         // (B, 3, H, W)
    TokenRect* rects;      // (Tp)
    uint16_t* cols;        // (Tp, 3 P P) bf16
    float* embedded;       // (Tp, C)
    float* pos;            // (cells, C)
    float* x[2];           // (A, C) residual stream, ping-pong over compactions
    uint16_t* h;           // (A, C) bf16 LayerNorm output
    uint16_t* qkv;         // (A, 3C) bf16
    uint16_t* att;         // (A, C) bf16
    uint16_t* mlp;         // (A, Hd) bf16
    float* tokens;         // (A, C) final norm
    float* logits;         // (A, K) head or exit-head logits
    uint8_t* halt;         // (A)
    int32_t* rect_of_row[2];  // (A)
    int32_t* src_row;      // (A)
    float* rect_logits;    // (Tp, K)
    int32_t* rect_exit;    // (Tp)
    float* grid_logits;    // (cells, K)
    int32_t* offsets[2];   // (B + 1)
    int32_t* grid_offset;  // (B)
    int32_t* grid_w;       // (B)
    int32_t* block_offsets;  // (depth + 1, B + 1) offsets entering each block, then after the last
  };
  Buffers carve(const Shape& s, char* base, size_t* bytes) const {
    const VitConfig& c = model_.config();
    const int64_t C = c.embed_dim, P = c.patch, K = std::max(c.num_classes, 1), A = s.A, Tp = s.Tp;
    Carver v(base);
    Buffers b;
    b.pixels = v.take<float>(int64_t(s.B) * 3 * s.H * s.W);
    b.rects = v.take<TokenRect>(Tp);
    b.cols = v.take<uint16_t>(Tp * 3 * P * P);
    b.embedded = v.take<float>(Tp * C);
    b.pos = v.take<float>(int64_t(s.cells) * C);
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
    b.grid_logits = v.take<float>(int64_t(s.cells) * K);
    b.offsets[0] = v.take<int32_t>(s.B + 1), b.offsets[1] = v.take<int32_t>(s.B + 1);
    b.grid_offset = v.take<int32_t>(s.B), b.grid_w = v.take<int32_t>(s.B);
    b.block_offsets = v.take<int32_t>(int64_t(c.depth + 1) * (s.B + 1));
    *bytes = v.used();
    return b;
  }
  Buffers workspace_for(const Shape& s) {
    size_t need = 0;
    carve(s, nullptr, &need);
    if (need > workspace_.bytes()) {
      STEP_CUDA_CHECK(cudaStreamSynchronize(stream_));
      workspace_.reset();  // free first: peak use is the new size only
      workspace_ = DeviceBuffer(need + need / 4, "the activation workspace of a " + std::to_string(s.B) + " x " +
                                                     std::to_string(s.H) + " x " + std::to_string(s.W) + " batch");
    }
    return carve(s, workspace_.as<char>(), &need);
  }

  VitModel& model_;
  Backend& host_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  size_t weight_bytes_ = 0;
  Linear patch_w_, head_;
  Norm norm_pre_, final_norm_;
  DeviceBuffer prefix_tokens_, pos_prefix_;
  std::vector<Block> blocks_;
  std::map<int, ExitHead> exits_;
  std::map<std::pair<int, int>, DeviceBuffer> pos_cache_;
  DeviceBuffer workspace_;
};

EncoderOutput CudaVitModel::forward(const EncoderInput& in) {
  using clock = std::chrono::steady_clock;
  const VitConfig& c = model_.config();
  const int B = in.images, C = c.embed_dim, P = c.patch, pre = c.prefix(), K = c.num_classes;
  EncoderOutput out;
  ForwardStats& st = out.stats;
  auto t0 = clock::now();
  NvtxRange range_forward("forward");
  cudaStream_t s = stream_;

  // Host bookkeeping, as VitModel::forward: rects (dense when none given), offsets, grids.
  std::vector<TokenRect> rects = in.rects;
  std::vector<int32_t> grid_w(B);
  out.grid_offset.resize(B);
  int64_t cells = 0;
  for (int b = 0; b < B; ++b) {
    auto [gh, gw] = in.grids[b];
    out.grid_offset[b] = int32_t(cells), grid_w[b] = gw;
    cells += int64_t(gh) * gw;
    if (in.rects.empty())
      for (int r = 0; r < gh; ++r)
        for (int col = 0; col < gw; ++col) rects.push_back({b, r, col, 1});
  }
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
  const int Tp = int(rects.size()), A0 = offsets[B];
  st.dense_tokens = cells + int64_t(B) * pre;
  st.input_tokens = A0;
  std::vector<int> exit_layers = in.prune.enabled ? in.prune.layers : std::vector<int>{};
  if (!exit_layers.empty() && max_t > token_halt_max_rows())
    throw Error(ErrorCode::kBadInput, "early exits on the GPU handle at most " + std::to_string(token_halt_max_rows()) +
                                          " tokens per image and this image has " + std::to_string(max_t) +
                                          ": use a smaller input size, merging, prune: false or device 'cpu'");

  const Shape shape{B, in.height, in.width, Tp, A0, int(cells)};
  Buffers w = workspace_for(shape);

  // Uploads: pixels, rects, offsets, grids, then each image's position embeddings.
  STEP_CUDA_CHECK(cudaEventRecord(start_, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.pixels, in.pixels, size_t(B) * 3 * in.height * in.width * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.rects, rects.data(), size_t(Tp) * sizeof(TokenRect), cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.offsets[0], offsets.data(), size_t(B + 1) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_offset, out.grid_offset.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_w, grid_w.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  for (int b = 0; b < B; ++b) {
    const float* g = pos_grid(in.grids[b].first, in.grids[b].second);
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.pos + int64_t(out.grid_offset[b]) * C, g,
                                    size_t(in.grids[b].first) * in.grids[b].second * C * 4, cudaMemcpyDeviceToDevice, s));
  }
  // rect_of_row and rect_exit start as in model.cpp: prefix rows -1, rect j at its row; no exit yet.
  {
    std::vector<int32_t> rect_of_row(A0, -1);
    for (int j = 0; j < Tp; ++j) rect_of_row[j + (rects[j].image + 1) * pre] = j;
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.rect_of_row[0], rect_of_row.data(), size_t(A0) * 4, cudaMemcpyHostToDevice, s));
    // cudaMemcpyAsync from pageable memory returns once the source is staged, so the vector may go.
  }
  if (Tp > 0) {
    fill_int_kernel<<<ceil_div(Tp, 256), 256, 0, s>>>(w.rect_exit, c.depth, Tp);
    STEP_CUDA_CHECK_LAUNCH();
  }

  // Patch embedding: im2col of every rect (bf16), one GEMM with the conv weight.
  {
    PatchGatherParams g;
    g.images = B, g.height = in.height, g.width = in.width, g.patch = P, g.pixels = w.pixels;
    g.tokens = Tp, g.rects = w.rects;
    PatchGatherDeviceExtras x;
    x.out_bf16 = w.cols;
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
  gemm_run(patch_w_, w.cols, Tp, nullptr, w.embedded, nullptr, Epilogue::kNone, nullptr);

  int cur = 0;  // which of the ping-pong buffers holds the live list
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
  // LayerNorm of the live rows: float32 out (y) and/or bf16 out (y_bf16).
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

  // Encoder blocks, with early exits: token counts never come back to the host here.
  std::vector<cudaEvent_t> group_events;
  std::vector<std::string> group_names;
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
      p.threshold = in.prune.threshold, p.top_k = in.prune.top_k, p.halt = w.halt;
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
      mark_exits_kernel<<<ceil_div(A0, 256), 256, 0, s>>>(rows, w.halt, w.rect_of_row[cur], i + 1, w.rect_exit, A0);
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
      gather_int_kernel<<<ceil_div(A0, 256), 256, 0, s>>>(w.offsets[nxt] + B, w.src_row, w.rect_of_row[cur],
                                                          w.rect_of_row[nxt], A0);
      STEP_CUDA_CHECK_LAUNCH();
    }
    cur = nxt, x = x_next;
    cudaEvent_t ev;
    STEP_CUDA_CHECK(cudaEventCreate(&ev));
    group_events.push_back(ev);
    STEP_CUDA_CHECK(cudaEventRecord(ev, s));
    group_names.push_back("blocks " + std::to_string(group_start) + "-" + std::to_string(i));
    group_start = i + 1;
  }
  snapshot_offsets(c.depth);
  layernorm_run(x, final_norm_, w.tokens, w.h);
  {
    cudaEvent_t ev;
    STEP_CUDA_CHECK(cudaEventCreate(&ev));
    group_events.push_back(ev);
    STEP_CUDA_CHECK(cudaEventRecord(ev, s));
    group_names.push_back(group_start == 0 ? "encoder" : "blocks " + std::to_string(group_start) + "-" +
                                                             std::to_string(c.depth - 1));
  }
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
    unshare(u, UnshareDeviceExtras{}, s);
  }
  STEP_CUDA_CHECK(cudaEventRecord(stop_, s));

  // Results back: the offsets of every block, rect exits, grid logits, and the tokens when asked.
  std::vector<int32_t> block_offsets(size_t(c.depth + 1) * (B + 1));
  STEP_CUDA_CHECK(cudaMemcpyAsync(block_offsets.data(), w.block_offsets, block_offsets.size() * 4, cudaMemcpyDeviceToHost, s));
  out.rect_exit.resize(Tp);
  STEP_CUDA_CHECK(cudaMemcpyAsync(out.rect_exit.data(), w.rect_exit, size_t(Tp) * 4, cudaMemcpyDeviceToHost, s));
  if (K > 0) {
    out.grid_logits.reset({cells, K});
    STEP_CUDA_CHECK(cudaMemcpyAsync(out.grid_logits.data(), w.grid_logits, size_t(cells) * K * 4, cudaMemcpyDeviceToHost, s));
  }
  Tensor tokens;
  if (in.want_tokens || in.capture) {
    tokens.reset({A0, C});
    STEP_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), w.tokens, size_t(A0) * C * 4, cudaMemcpyDeviceToHost, s));
  }
  const cudaError_t err = cudaStreamSynchronize(s);
  std::vector<float> group_ms;
  float last = 0;
  for (cudaEvent_t ev : group_events) {
    float ms = 0;
    if (err == cudaSuccess) cudaEventElapsedTime(&ms, start_, ev);
    group_ms.push_back(ms - last), last = ms;
    cudaEventDestroy(ev);
  }
  if (err != cudaSuccess) throw_cuda_error(err, "the GPU forward", __FILE__, __LINE__);
  float total_ms = 0;
  cudaEventElapsedTime(&total_ms, start_, stop_);

  // Stats as the CPU computes them, from the offsets each block saw.
  auto gemm_gflops = [](int64_t M, int64_t N, int64_t Kd) { return 2e-9 * double(M) * N * Kd; };
  st.gflops += gemm_gflops(Tp, C, 3 * P * P);
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
      for (int32_t e : out.rect_exit) halted += e == i + 1;
      st.halted.push_back(halted);
    }
  }
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
  for (size_t g = 0; g < group_ms.size(); ++g) st.ms.emplace_back(group_names[g] + " (gpu)", group_ms[g]);
  st.ms.emplace_back("head (gpu)", std::max(0.f, total_ms - last));
  st.ms.emplace_back("host + transfers", std::max(0.0, host_ms - total_ms));
  return out;
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
