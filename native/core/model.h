// model.h: the ViT segmentation model graph, backend-neutral.
// A model is a VitConfig (timm VisionTransformer fields) plus float32 weights keyed by timm's names.
// forward() runs the whole network over a packed token list, one backend call per step.
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "merge.h"
#include "packed_weights.h"
#include "tensor.h"
#include "weights.h"

namespace step {

// Every field is set by the addon from lib/config.ts's ModelConfig, which holds the defaults: none here.
struct VitConfig {
  int patch = 0, embed_dim = 0, depth = 0, heads = 0, mlp_hidden = 0;
  bool qkv_bias = false, class_token = false, no_embed_class = false, pre_norm = false, layer_scale = false;
  int reg_tokens = 0;
  float norm_eps = 0.f;
  int grid_h = 0, grid_w = 0;  // patch grid the position embeddings were trained for
  int num_classes = 0;         // 0: no segmentation head (features only)
  std::vector<int> exit_layers;  // early-exit heads after these blocks (1-based count of blocks run)
  std::vector<int> policy_levels;  // window sides with learned merge-policy heads (empty: no policy)
  int policy_outputs = 0;          // 1: sigmoid heads; 2: two-way softmax heads (class 1 = merge)
  int policy_pool = 0;             // the policy's input average-pooling factor (MergePolicyNet::pool)
  int policy_feature = 0;          // the trunk's feature map the policy heads read (0..4; 4: stride 32)
  int prefix() const { return (class_token ? 1 : 0) + reg_tokens; }
};

// Checks every entry against the config (names, shapes, dtypes, byte ranges) and converts the
// tensors the model uses to float32. Errors are kBadModel and name the tensor. The merge-policy trunk
// (policy.trunk.*) is left to load_effnet_weights.
std::map<std::string, Tensor> load_weights(const VitConfig& cfg, const ByteSource& src, const std::vector<TensorEntry>& entries);
std::map<std::string, Tensor> load_weights(const VitConfig& cfg, const uint8_t* data, size_t size,
                                           const std::vector<TensorEntry>& entries);


// Timings and token counts of one forward.
struct ForwardStats {
  int64_t dense_tokens = 0, input_tokens = 0;
  std::vector<int64_t> per_block;  // active tokens entering each block
  std::vector<int64_t> halted;     // tokens halted at each exit taken
  double gflops = 0;        // work done (cost.h)
  double dense_gflops = 0;  // the dense forward over the same images (cost.h: dense_gflops)
  std::vector<std::pair<std::string, double>> ms;  // stage name, milliseconds
};

// Early pruning for one forward: exits after these blocks (a subset of VitConfig::exit_layers).
struct PruneSettings {
  bool enabled = false;
  std::vector<int> layers;
  float threshold = std::numeric_limits<float>::quiet_NaN();  // set when enabled (lib/config.ts: the defaults)
  int top_k = -1;
  int agree = -1;  // 1: halting needs agreement with neighbours (TokenHaltParams), 0: not; set when enabled
};

struct EncoderInput {
  int images = 0, height = 0, width = 0;  // pixel buffer: B images of H x W (padded, multiples of P)
  const float* pixels = nullptr;          // (B, 3, H, W) normalised
  std::vector<std::pair<int, int>> grids; // per image (gh, gw): its own patch grid, inside H x W
  std::vector<TokenRect> rects;           // token rects of every image, in image order, each image's
                                          // covering its grid exactly once; empty: dense (one per patch)
  bool capture = false;                   // keep patch_embed, tokens_0, block_N, final_norm copies
  bool want_tokens = true;                // fill EncoderOutput::tokens (a GPU forward skips the copy if not)
  PruneSettings prune;
  UnshareMode unshare = UnshareMode::kUnset;  // how superpatches go back to the grid (lib/config.ts
                                              // merge.unshare; kCopy where nothing merges)
};

struct EncoderOutput {
  std::vector<int32_t> offsets;  // (B + 1) rows of each image in tokens
  Tensor tokens;                 // (A, C) final-norm tokens still active, prefix tokens first per image
  Tensor grid_logits;            // (sum of gh * gw, K) per-patch logits after unsharing, if a head exists
  std::vector<int32_t> grid_offset;  // (B) first cell of each image in grid_logits
  std::vector<int32_t> rect_exit;    // (rects) blocks each token went through before it halted (depth: none)
  std::vector<std::pair<std::string, Tensor>> captured;
  ForwardStats stats;
};

class VitModel {
 public:
  VitModel(VitConfig cfg, std::map<std::string, Tensor> weights, std::unique_ptr<MergePolicyNet> policy);
  const VitConfig& config() const { return cfg_; }
  const MergePolicyNet* policy() const { return policy_.get(); }
  EncoderOutput forward(Backend& backend, const EncoderInput& in);

  // The float32 weights by timm name (other backends upload them); w_or_null for optional ones.
  const Tensor& w(const std::string& name) const;
  const float* w_or_null(const std::string& name) const;
  // Position embeddings for a patch grid, (gh, gw, C): the trained grid, or resampled (with
  // `backend`'s pos_resample, on the host). Cached, least recently used first out once the cache holds
  // more than its byte limit (STEP_SEG_POS_CACHE_MB, default 64); the grid a caller holds stays valid.
  std::shared_ptr<const Tensor> pos_grid(Backend& backend, int gh, int gw);
  struct PosCacheInfo {
    size_t entries = 0, bytes = 0, limit = 0;
  };
  PosCacheInfo pos_cache_info();

 private:

  VitConfig cfg_;
  std::map<std::string, Tensor> weights_;
  std::unique_ptr<MergePolicyNet> policy_;
  std::mutex pos_mutex_;
  struct PosEntry {
    std::shared_ptr<const Tensor> grid;
    uint64_t used = 0;  // pos_clock_ at the last use
  };
  std::map<std::pair<int, int>, PosEntry> pos_cache_;
  size_t pos_bytes_ = 0, pos_limit_ = 0;
  uint64_t pos_clock_ = 0;
  PackedWeightCache packed_;  // the gemm weights, packed on first use
};

// The whole model: backbone, heads, and the merge policy when the config has one.
std::unique_ptr<VitModel> load_vit_model(const VitConfig& cfg, const ByteSource& src, const std::vector<TensorEntry>& entries);
std::unique_ptr<VitModel> load_vit_model(const VitConfig& cfg, const uint8_t* data, size_t size,
                                         const std::vector<TensorEntry>& entries);

}  // namespace step
