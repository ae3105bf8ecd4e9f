// device_model_impl.cuh: the CudaVitModel class behind DeviceModel (device_model.h), shared by its four
// files, one concern each:
//   device_model.cu    creation, weight upload, the position-embedding cache, the workspace (the
//                      memory pool: carve, workspace_for), call shapes, timing
//   device_encoder.cu  forward() and the encoder: blocks, early exits, compaction, head, fill_stats
//   device_segment.cu  segment(): normalise, score and plan the merge, encode, unshare, upsample, and
//                      the CUDA graphs it is captured into (launch)
//   device_policy.cu   the learned merge policy: its weights, the EfficientNet trunk's sizes and scores
// Included only by those files (the emulator build compiles them as host C++ like every .cu file).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common.cuh"
#include "cuda_ops.h"
#include "device_model.h"

namespace step::cuda::device_model_detail {

// cudaMalloc with the typed out-of-memory error the house rules ask for (device_model.cu).
void* device_alloc(size_t bytes, const std::string& what);

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
  std::map<int, Linear> heads;  // per window side: N = 1, K = the feature map's channels
  int pool = 1, feature = 4;    // MergePolicyNet::pool, MergePolicyNet::feature()
};

// Element counts of the trunk's buffers for one image of H x W pixels, average-pooled by `pool`, through
// the blocks of a trunk of `features` feature maps (its GFLOPs: cost.h).
struct TrunkSizes {
  int64_t map = 0, expanded = 0, mid = 0, bf16 = 0;
};
TrunkSizes trunk_sizes(int H, int W, int pool, int features);  // device_policy.cu

// What fixes the work of a call: sizes and settings, never pixel values (the graph key).
struct CallShape {
  int B = 0, H = 0, W = 0;
  std::vector<std::pair<int, int>> grids;
  std::vector<std::array<int, 5>> images;  // h, w, channels, out_h, out_w (segment only)
  int tp_bound = 0, a_bound = 0, max_t = 0;
  int64_t cells = 0, rgb_bytes = 0, out_pixels = 0;
  bool probs = false;
  TrunkSizes trunk;       // the largest image's, when the learned policy runs
  int64_t pooled = 0;     // (windows of the largest level grid, C) policy head input
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
  CudaVitModel(VitModel& model, Backend& host);
  ~CudaVitModel() override { release(); }

  EncoderOutput forward(const EncoderInput& in) override;
  SegmentResult segment(const SegmentRequest& r) override;

 private:
  void release();
  void drop_graphs();

  // Weights (device_model.cu): GEMM weights as bf16, the rest as float32.
  DeviceBuffer upload_f32(const float* src, int64_t n, const std::string& what);
  DeviceBuffer upload_bf16(const float* src, int64_t n, const std::string& what);
  Linear linear(const std::string& name, int N, int K);
  Norm norm(const std::string& name);
  void upload_weights();
  // The learned policy's weights (device_policy.cu).
  DeviceConv conv_weights(const EffNetTrunk& t, const std::string& name);
  Linear pointwise_weights(const EffNetTrunk& t, const std::string& name, int out_c, int in_c);
  void upload_policy(const MergePolicyNet& net);

  // The (gh, gw, C) position embeddings of a grid on the device, uploaded on first use. Bounded like
  // the host cache (VitModel::pos_grid): evict_pos() drops the least recently used grids that the
  // current call does not use, before its copies are queued (earlier calls have synchronised).
  const float* pos_grid(int gh, int gw);
  void evict_pos(const std::vector<std::pair<int, int>>& keep);

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
    int32_t* levels;       // (num_levels) window sides
    float* thresholds;     // (num_levels)
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
    float* pooled;         // (windows, C)
    uint16_t* pooled_bf16;
  };
  Buffers carve(const CallShape& s, char* base, size_t* bytes) const;
  Buffers workspace_for(const CallShape& s);

  // The host part of every call: grids, grid offsets, bounds.
  CallShape shape_of(int B, int H, int W, const std::vector<std::pair<int, int>>& grids, std::vector<int32_t>* grid_offset,
                     std::vector<int32_t>* grid_w) const;

  // The learned policy's window scores of one image (levels concatenated at `scores`), on the device.
  void policy_scores(const Buffers& w, const uint8_t* rgb, int h, int wd, int channels, int gh, int gw,
                     const std::vector<int32_t>& levels, float* scores);

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
  bool launch(const std::string& key, Body body);

  // Stats from the offsets each block saw (downloaded), as the CPU computes them.
  void fill_stats(const CallShape& s, const std::vector<int32_t>& block_offsets, const std::vector<int>& exit_layers,
                  int64_t rects, EncoderOutput& out) const;

  VitModel& model_;
  Backend& host_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  bool use_graphs_ = true;
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

}  // namespace step::cuda::device_model_detail
