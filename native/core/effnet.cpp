// effnet.cpp: weight validation, BatchNorm folding and the forward of the EfficientNet-Lite0 trunk.
//
// Architecture: timm's efficientnet_lite0 (arch strings ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24,
// ir_r2_k5_s2_e6_c40, ir_r3_k3_s2_e6_c80, ir_r3_k5_s1_e6_c112, ir_r4_k5_s2_e6_c192,
// ir_r1_k3_s1_e6_c320; fixed 32-channel stem; ReLU6; no squeeze-excitation), features_only:
//   conv_stem 3 -> 32, 3 x 3 stride 2, bn1, ReLU6
//   blocks.0.0  DepthwiseSeparable: conv_dw k x k, bn1, ReLU6; conv_pw 1 x 1, bn2 (no activation)
//   blocks.S.R  InvertedResidual:   conv_pw 1 x 1 (x6), bn1, ReLU6; conv_dw k x k stride s, bn2, ReLU6;
//                                   conv_pwl 1 x 1, bn3 (no activation)
//   a block adds its input back when its stride is 1 and in == out; only the first block of a stage
//   has the stage's stride. Feature maps: the outputs of stages 0, 1, 2, 4 and 6 (strides 2 to 32),
//   timm's feature_info for out_indices (0, 1, 2, 3, 4).
// Padding is symmetric, (k - 1) / 2 on every side: timm's non-"tf_" models use PyTorch's padding, not
// TensorFlow's "SAME" (which pads stride-2 convolutions on the bottom and right only).
//
// Weights: BatchNorm in eval mode, y = (x - mean) / sqrt(var + eps) * gamma + beta, is an affine map
// per channel, folded into the convolution before it: with s = gamma / sqrt(var + eps),
// w' = w * s (per output channel) and b' = beta - mean * s, computed in double and stored as float32.
//
// Forward: every map is NHWC float32, (B, h, w, C), so a 1 x 1 convolution is one gemm over the
// B * h * w rows with the conv weight read as (out, in), and the k x k ones are backend.conv calls with
// bias and ReLU6 fused. The projection gemm of a block with a skip adds the block input in its
// epilogue (Epilogue::kResidual); the expansion gemm applies ReLU6 in its epilogue (Epilogue::kRelu6).
//
// References: timm/models/efficientnet.py (_gen_efficientnet_lite), timm/models/_efficientnet_blocks.py
// (DepthwiseSeparableConv, InvertedResidual), timm/layers/padding.py (get_padding); Tan & Le,
// "EfficientNet" (2019); the EfficientNet-Lite release notes (TensorFlow TPU repository, 2020).
#include "effnet.h"

#include <cmath>
#include <cstring>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "cost.h"

namespace step {
namespace {

// One stage of the arch definition.
struct StageSpec {
  int repeats, kernel, stride, out, expand;
};
constexpr StageSpec kStages[] = {
    {1, 3, 1, 16, 1},  {2, 3, 2, 24, 6},  {2, 5, 2, 40, 6},  {3, 3, 2, 80, 6},
    {3, 5, 1, 112, 6}, {4, 5, 2, 192, 6}, {1, 3, 1, 320, 6},
};
// The stage whose output is each feature map.
constexpr int kFeatureStage[EffNetTrunk::kFeatures] = {0, 1, 2, 4, 6};

using BlockSpec = EffNetTrunk::Block;

std::vector<BlockSpec> block_specs() {
  std::vector<BlockSpec> blocks;
  int in = EffNetTrunk::kStemChannels, feature = 0;
  for (int s = 0; s < int(std::size(kStages)); ++s) {
    const StageSpec& st = kStages[s];
    for (int r = 0; r < st.repeats; ++r) {
      BlockSpec b;
      b.name = "blocks." + std::to_string(s) + "." + std::to_string(r) + ".";
      b.in = in, b.mid = in * st.expand, b.out = st.out;
      b.kernel = st.kernel, b.stride = r == 0 ? st.stride : 1;
      b.separable = s == 0;
      b.skip = b.stride == 1 && b.in == b.out;
      b.feature = r == st.repeats - 1 && feature < EffNetTrunk::kFeatures && kFeatureStage[feature] == s ? feature++ : -1;
      blocks.push_back(b);
      in = st.out;
    }
  }
  return blocks;
}

// A convolution and the BatchNorm that follows it.
struct ConvBn {
  std::string conv, bn;           // timm names without the prefix, e.g. "blocks.1.0.conv_pw", "blocks.1.0.bn1"
  std::vector<int64_t> shape;     // conv weight (out_c, in_c / groups, k, k)
};

// The convolutions of a trunk of `features` feature maps (EffNetConfig::features).
std::vector<ConvBn> conv_bn_pairs(int features) {
  std::vector<ConvBn> pairs = {{"conv_stem", "bn1", {EffNetTrunk::kStemChannels, 3, 3, 3}}};
  const std::vector<BlockSpec> all = block_specs();
  for (int i = 0; i < EffNetTrunk::num_blocks(features); ++i) {
    const BlockSpec& b = all[size_t(i)];
    const int64_t k = b.kernel;
    if (b.separable) {
      pairs.push_back({b.name + "conv_dw", b.name + "bn1", {b.in, 1, k, k}});
      pairs.push_back({b.name + "conv_pw", b.name + "bn2", {b.out, b.in, 1, 1}});
    } else {
      pairs.push_back({b.name + "conv_pw", b.name + "bn1", {b.mid, b.in, 1, 1}});
      pairs.push_back({b.name + "conv_dw", b.name + "bn2", {b.mid, 1, k, k}});
      pairs.push_back({b.name + "conv_pwl", b.name + "bn3", {b.out, b.mid, 1, 1}});
    }
  }
  return pairs;
}

const char* const kBnFields[] = {"weight", "bias", "running_mean", "running_var"};

// Tensors of a full timm checkpoint that the trunk does not use: the classifier head (conv_head,
// the top-level bn2, classifier) and BatchNorm's step counters. Names are relative to the prefix.
bool ignorable(const std::string& name) {
  auto starts = [&](const char* s) { return name.compare(0, std::strlen(s), s) == 0; };
  const std::string counter = ".num_batches_tracked";
  const bool is_counter =
      name.size() >= counter.size() && name.compare(name.size() - counter.size(), counter.size(), counter) == 0;
  return starts("conv_head.") || starts("bn2.") || starts("classifier.") || is_counter;
}


// Output size of a k x k convolution with symmetric padding (k - 1) / 2.

}  // namespace

std::map<std::string, Tensor> load_effnet_weights(const std::string& prefix, const uint8_t* data, size_t size,
                                                  const std::vector<TensorEntry>& entries, const EffNetConfig& cfg) {
  return load_effnet_weights(prefix, MemorySource(data, size), entries, cfg);
}

std::map<std::string, Tensor> load_effnet_weights(const std::string& prefix, const ByteSource& src,
                                                  const std::vector<TensorEntry>& entries, const EffNetConfig& cfg) {
  if (cfg.features < 1 || cfg.features > EffNetTrunk::kFeatures)
    throw Error(ErrorCode::kBadModel, "a policy trunk computes 1 to 5 feature maps, not " + std::to_string(cfg.features));
  const std::vector<ConvBn> pairs = conv_bn_pairs(cfg.features);
  std::map<std::string, std::vector<int64_t>> expected;  // name without prefix -> shape
  for (const ConvBn& p : pairs) {
    expected[p.conv + ".weight"] = p.shape;
    for (const char* f : kBnFields) expected[p.bn + "." + f] = {p.shape[0]};
  }
  std::map<std::string, const TensorEntry*> by_name;  // name without prefix
  for (const TensorEntry& e : entries) {
    if (e.name.compare(0, prefix.size(), prefix) != 0) continue;  // not the trunk's: another loader's
    const std::string name = e.name.substr(prefix.size());
    if (!by_name.emplace(name, &e).second)
      throw Error(ErrorCode::kBadModel, "tensor " + e.name + " appears twice in the weights file");
    if (!expected.count(name) && !ignorable(name))
      throw Error(ErrorCode::kBadModel, "unexpected tensor " + e.name + " " + shape_str(e.shape) +
                                            ": not part of the efficientnet_lite0 trunk" +
                                            (cfg.features < EffNetTrunk::kFeatures
                                                 ? " truncated after feature map " + std::to_string(cfg.features - 1)
                                                 : std::string()) +
                                            (prefix.empty() ? std::string() : " under \"" + prefix + "\""));
  }
  std::map<std::string, Tensor> raw;
  for (const auto& [name, shape] : expected) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw Error(ErrorCode::kBadModel, "missing tensor " + prefix + name + ": expected shape " + shape_str(shape));
    raw.emplace(name, read_tensor(*it->second, shape, src, "efficientnet_lite0"));
  }

  // Fold each BatchNorm into its convolution, in double: w' = w * s, b' = beta - mean * s.
  std::map<std::string, Tensor> folded;
  for (const ConvBn& p : pairs) {
    const Tensor& w = raw.at(p.conv + ".weight");
    const float* gamma = raw.at(p.bn + ".weight").data();
    const float* beta = raw.at(p.bn + ".bias").data();
    const float* mean = raw.at(p.bn + ".running_mean").data();
    const float* var = raw.at(p.bn + ".running_var").data();
    const int64_t out_c = p.shape[0], per_out = int64_t(w.numel()) / out_c;
    Tensor fw(p.shape), fb({out_c});
    for (int64_t o = 0; o < out_c; ++o) {
      const double denom = double(var[o]) + double(cfg.bn_eps);
      if (!(denom > 0))
        throw Error(ErrorCode::kBadModel, "tensor " + prefix + p.bn + ".running_var holds " + std::to_string(var[o]) +
                                              " at element " + std::to_string(o) +
                                              ": a variance must not be negative; the weights are corrupt");
      const double s = double(gamma[o]) / std::sqrt(denom);
      for (int64_t i = 0; i < per_out; ++i) fw.data()[o * per_out + i] = float(double(w.data()[o * per_out + i]) * s);
      fb.data()[o] = float(double(beta[o]) - double(mean[o]) * s);
      bool finite = std::isfinite(fb.data()[o]);
      for (int64_t i = 0; i < per_out; ++i) finite = finite && std::isfinite(fw.data()[o * per_out + i]);
      if (!finite)
        throw Error(ErrorCode::kBadModel, "folding " + prefix + p.bn + " into " + prefix + p.conv +
                                              " overflows float32 at channel " + std::to_string(o) +
                                              ": the weights are corrupt");
    }
    folded.emplace(p.conv + ".weight", std::move(fw));
    folded.emplace(p.conv + ".bias", std::move(fb));
  }
  return folded;
}

const std::vector<EffNetTrunk::Block>& EffNetTrunk::blocks() {
  static const std::vector<Block> specs = block_specs();
  return specs;
}

int EffNetTrunk::num_blocks(int features) {
  const std::vector<Block>& all = blocks();
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i].feature == features - 1) return int(i) + 1;
  STEP_CHECK(false, "a trunk has 1 to 5 feature maps");
  return 0;
}

EffNetTrunk::EffNetTrunk(EffNetConfig cfg, std::map<std::string, Tensor> folded)
    : cfg_(cfg), weights_(std::move(folded)) {
  for (const ConvBn& p : conv_bn_pairs(cfg_.features)) {
    STEP_CHECK(w(p.conv + ".weight").dims() == p.shape, "folded weight " + p.conv + ".weight has the wrong shape");
    STEP_CHECK(w(p.conv + ".bias").dims() == std::vector<int64_t>{p.shape[0]},
               "folded bias " + p.conv + ".bias has the wrong shape");
  }
}

const Tensor& EffNetTrunk::w(const std::string& name) const {
  auto it = weights_.find(name);
  STEP_CHECK(it != weights_.end(), "weight " + name + " not loaded");
  return it->second;
}

std::vector<Tensor> EffNetTrunk::forward(Backend& backend, const float* x, int B, int H, int W, double* gflops) const {
  if (B < 1 || H < 1 || W < 1)
    throw Error(ErrorCode::kBadInput, "Expected at least one image of at least 1 x 1 pixels for the policy trunk "
                                      "but received " + std::to_string(B) + " images of " + std::to_string(H) + " x " +
                                      std::to_string(W));
  // The gemms index rows with int: the largest has B * ceil(H / 2) * ceil(W / 2) rows.
  if (int64_t(B) * H * W > INT32_MAX)
    throw Error(ErrorCode::kBadInput, "Expected at most 2^31 - 1 input pixels for the policy trunk but received " +
                                          std::to_string(B) + " images of " + std::to_string(H) + " x " +
                                          std::to_string(W));
  if (gflops) *gflops += double(B) * effnet_gflops(H, W, cfg_.features);  // cost.h
  // k x k convolution of (B, in_h, in_w, in_c) `in` into (B, out_h, out_w, out_c) `out`, BatchNorm folded, ReLU6.
  auto conv = [&](const float* in, int in_h, int in_w, int in_c, const std::string& name, int out_c, int kernel,
                  int stride, bool depthwise, Tensor& out) {
    ConvParams c;
    c.batch = B, c.in_h = in_h, c.in_w = in_w, c.in_c = in_c;
    c.out_h = conv_out(in_h, kernel, stride), c.out_w = conv_out(in_w, kernel, stride), c.out_c = out_c;
    c.kernel = kernel, c.stride = stride, c.pad = (kernel - 1) / 2, c.groups = depthwise ? in_c : 1;
    c.x = in, c.w = w(name + ".weight").data(), c.bias = w(name + ".bias").data();
    c.act = Activation::kRelu6;
    out.reset({B, c.out_h, c.out_w, out_c});
    c.y = out.data();
    backend.conv(c);
  };
  // 1 x 1 convolution of (rows, in_c) `in` into (rows, out_c) `out`; residual (rows, out_c) or null.
  auto pointwise = [&](const float* in, int64_t rows, int in_c, const std::string& name, int out_c, Epilogue ep,
                       const float* residual, float* out) {
    GemmParams g;
    g.M = int(rows), g.N = out_c, g.K = in_c, g.a = in, g.lda = in_c;
    g.w = w(name + ".weight").data(), g.bias = w(name + ".bias").data();  // (out_c, in_c, 1, 1) read as (N, K)
    g.w_packed = packed_->get(backend, name + ".weight", g.w, out_c, in_c);
    g.epilogue = ep, g.residual = residual;
    g.c = out, g.ldc = out_c;
    backend.gemm(g);
  };

  std::vector<Tensor> features;
  features.reserve(size_t(cfg_.features));
  Tensor stem;  // (B, ceil(H / 2), ceil(W / 2), 32)
  conv(x, H, W, 3, "conv_stem", EffNetTrunk::kStemChannels, 3, 2, false, stem);
  int ih = int(stem.dim(1)), iw = int(stem.dim(2));  // the current map's height and width
  Tensor own = std::move(stem);   // the current map while it is not a feature map
  const float* cur = own.data();  // (B, ih, iw, block.in): the next block's input, `own` or a feature map
  Tensor expanded, mid;           // per-block scratch, reused: (B, ih, iw, block.mid), (B, oh, ow, block.mid)

  const std::vector<BlockSpec>& specs = blocks();
  for (int i = 0; i < num_blocks(cfg_.features); ++i) {
    const BlockSpec& b = specs[size_t(i)];
    const int oh = conv_out(ih, b.kernel, b.stride), ow = conv_out(iw, b.kernel, b.stride);
    const int64_t rows_in = int64_t(B) * ih * iw, rows_out = int64_t(B) * oh * ow;
    Tensor y({B, oh, ow, b.out});  // (B, oh, ow, out)
    const Epilogue project = b.skip ? Epilogue::kResidual : Epilogue::kNone;
    if (b.separable) {
      conv(cur, ih, iw, b.in, b.name + "conv_dw", b.in, b.kernel, b.stride, true, mid);
      pointwise(mid.data(), rows_out, b.in, b.name + "conv_pw", b.out, project, b.skip ? cur : nullptr, y.data());
    } else {
      expanded.reset({B, ih, iw, b.mid});
      pointwise(cur, rows_in, b.in, b.name + "conv_pw", b.mid, Epilogue::kRelu6, nullptr, expanded.data());
      conv(expanded.data(), ih, iw, b.mid, b.name + "conv_dw", b.mid, b.kernel, b.stride, true, mid);
      pointwise(mid.data(), rows_out, b.mid, b.name + "conv_pwl", b.out, project, b.skip ? cur : nullptr, y.data());
    }
    ih = oh, iw = ow;
    // Moving a Tensor keeps its buffer, so `cur` stays valid as `features` grows.
    if (b.feature >= 0) {
      features.push_back(std::move(y));
      cur = features.back().data();
    } else {
      own = std::move(y);
      cur = own.data();
    }
  }
  STEP_CHECK(int(features.size()) == cfg_.features, "policy trunk produced the wrong number of feature maps");
  return features;
}

}  // namespace step
