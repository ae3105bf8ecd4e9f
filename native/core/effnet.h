// effnet.h: the EfficientNet-Lite0 trunk of the merge policy, backend-neutral.
// The architecture is fixed: timm's efficientnet_lite0 with features_only, out_indices (0, 1, 2, 3, 4).
// Weights use timm's key names under a prefix ("" for a bare timm state dict, "policy.trunk." when
// the trunk is embedded in a ViT weights file); BatchNorm is folded into the convolutions at load
// time, so forward() is convolutions and 1 x 1 gemms only, one backend call per step.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "packed_weights.h"
#include "tensor.h"
#include "weights.h"

namespace step {

struct EffNetConfig {
  float bn_eps = 1e-5f;  // eps of every BatchNorm (timm's default)
  // Feature maps the trunk computes, 1..5: a truncated trunk (the merge policy's, `policy_feature` + 1)
  // stops after the block that produces map features - 1, and its weights hold only the blocks it runs.
  int features = 5;
};

// Checks the trunk's tensors among `entries` (names prefix + timm name, shapes, dtypes F32 / F16 /
// BF16, byte ranges inside the data section of `size` bytes, finite values), converts them to float32
// and folds each BatchNorm (eval mode) into the convolution before it, in double precision.
// Entries outside the prefix are ignored; under it, only timm's unused classifier head (conv_head.*,
// bn2.*, classifier.*) and *.num_batches_tracked may appear besides the trunk. Errors are kBadModel
// and name the tensor.
// Returns, keyed by timm's convolution names without the prefix ("conv_stem", "blocks.S.R.conv_dw",
// "blocks.S.R.conv_pw", "blocks.S.R.conv_pwl"), "<conv>.weight" float32 in PyTorch's Conv2d layout
// (out_c, in_c / groups, k, k) and "<conv>.bias" (out_c), both with the BatchNorm folded in.
std::map<std::string, Tensor> load_effnet_weights(const std::string& prefix, const ByteSource& src,
                                                  const std::vector<TensorEntry>& entries, const EffNetConfig& cfg);
std::map<std::string, Tensor> load_effnet_weights(const std::string& prefix, const uint8_t* data, size_t size,
                                                  const std::vector<TensorEntry>& entries, const EffNetConfig& cfg);

class EffNetTrunk {
 public:
  static constexpr int kFeatures = 5;
  static constexpr int kFeatureChannels[kFeatures] = {16, 24, 40, 112, 320};
  static constexpr int kFeatureStrides[kFeatures] = {2, 4, 8, 16, 32};

  // folded: as returned by load_effnet_weights.
  EffNetTrunk(EffNetConfig cfg, std::map<std::string, Tensor> folded);
  const EffNetConfig& config() const { return cfg_; }

  // The architecture, for other forwards of the same trunk (native/cuda): the stem (3 x 3, stride 2,
  // kStemChannels, ReLU6), then these blocks in order; every conv is BatchNorm-folded with ReLU6 but the
  // projections (conv_pw of a separable block, conv_pwl), which add the block input when `skip`.
  struct Block {
    std::string name;            // "blocks.S.R."
    int in, mid, out;            // channels: input, expanded (InvertedResidual only), output
    int kernel, stride;          // of the depthwise convolution
    bool separable;              // DepthwiseSeparable (stage 0) rather than InvertedResidual
    bool skip;                   // adds the block input to its output
    int feature;                 // index of the feature map this block produces, or -1
  };
  static constexpr int kStemChannels = 32;
  static const std::vector<Block>& blocks();
  // How many of blocks() run for a trunk of `features` feature maps (1..kFeatures).
  static int num_blocks(int features);
  static int conv_out(int n, int kernel, int stride) { return (n + 2 * ((kernel - 1) / 2) - kernel) / stride + 1; }
  // A folded tensor by the names of load_effnet_weights ("blocks.1.0.conv_pw.weight", ...).
  const Tensor& weight(const std::string& name) const { return w(name); }

  // x: (B, H, W, 3) float32 NHWC, normalised as the trunk was trained; any H, W >= 1.
  // Returns config().features maps (kFeatures unless truncated), feature i (B, h_i, w_i, kFeatureChannels[i]) float32 NHWC, where each
  // stride-2 convolution maps n to (n - 1) / 2 + 1 (so h_i = ceil(H / kFeatureStrides[i]) ).
  // Throws kBadInput when B, H or W is below 1.
  std::vector<Tensor> forward(Backend& backend, const float* x, int B, int H, int W, double* gflops = nullptr) const;

 private:
  const Tensor& w(const std::string& name) const;

  EffNetConfig cfg_;
  std::map<std::string, Tensor> weights_;
  // The pointwise convolutions' weights packed for gemm on first use; behind a pointer so that the
  // trunk stays movable (the cache holds a mutex).
  std::unique_ptr<PackedWeightCache> packed_ = std::make_unique<PackedWeightCache>();
};

}  // namespace step
