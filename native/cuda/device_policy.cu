// device_policy.cu: the learned merge policy on the GPU (see device_model_impl.cuh): its weights
// (the EfficientNet-Lite0 trunk with BatchNorm folded, one sigmoid head per window side), the trunk's
// buffer sizes and GFLOPs, and the window scores of one image: the trunk's convolutions (conv.cu) and
// pointwise GEMMs (gemm.cu), then per level an average pool and the head. The CPU twin is MergePolicyNet
// (native/core/effnet.cpp).
#include <algorithm>
#include <string>
#include <vector>

#include "device_model_impl.cuh"

namespace step::cuda::device_model_detail {

TrunkSizes trunk_sizes(int H, int W, int pool, int features) {
  TrunkSizes t;
  using T = EffNetTrunk;
  const int Hp = H / pool, Wp = W / pool;
  int ih = T::conv_out(Hp, 3, 2), iw = T::conv_out(Wp, 3, 2);
  t.map = int64_t(ih) * iw * T::kStemChannels;
  if (pool > 1) t.mid = int64_t(Hp) * Wp * 3;  // the pooled input, read by the stem (policy_scores)
  for (int i = 0; i < T::num_blocks(features); ++i) {
    const T::Block& b = T::blocks()[size_t(i)];
    const int oh = T::conv_out(ih, b.kernel, b.stride), ow = T::conv_out(iw, b.kernel, b.stride);
    const int64_t in_px = int64_t(ih) * iw, out_px = int64_t(oh) * ow;
    const int dw_c = b.separable ? b.in : b.mid;
    t.map = std::max(t.map, out_px * b.out);
    t.mid = std::max(t.mid, out_px * dw_c);
    t.bf16 = std::max(t.bf16, out_px * dw_c);
    if (!b.separable) {
      t.expanded = std::max(t.expanded, in_px * b.mid);
      t.bf16 = std::max(t.bf16, in_px * b.in);
    }
    ih = oh, iw = ow;
  }
  return t;
}

DeviceConv CudaVitModel::conv_weights(const EffNetTrunk& t, const std::string& name) {
  const Tensor& w = t.weight(name + ".weight");
  const Tensor& b = t.weight(name + ".bias");
  return {upload_f32(w.data(), w.numel(), "policy." + name + ".weight"), upload_f32(b.data(), b.numel(), "policy." + name + ".bias")};
}

Linear CudaVitModel::pointwise_weights(const EffNetTrunk& t, const std::string& name, int out_c, int in_c) {
  Linear l;
  l.N = out_c, l.K = in_c;
  l.w = upload_bf16(t.weight(name + ".weight").data(), int64_t(out_c) * in_c, "policy." + name + ".weight");
  l.b = upload_f32(t.weight(name + ".bias").data(), out_c, "policy." + name + ".bias");
  return l;
}

void CudaVitModel::upload_policy(const MergePolicyNet& net) {
  auto p = std::make_unique<DevicePolicy>();
  p->stem = conv_weights(net.trunk, "conv_stem");
  p->pool = net.pool, p->feature = net.feature();
  const int n_blocks = EffNetTrunk::num_blocks(net.trunk.config().features);
  for (int i = 0; i < n_blocks; ++i) {
    const EffNetTrunk::Block& b = EffNetTrunk::blocks()[size_t(i)];
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

void CudaVitModel::policy_scores(const Buffers& w, const uint8_t* rgb, int h, int wd, int channels, int gh, int gw,
                                 const std::vector<int32_t>& levels, float* scores) {
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
  // The pooled input goes to trunk_mid (trunk_sizes makes room for it), which the stem reads and the
  // first block overwrites.
  const int pool = policy_->pool, C = T::kFeatureChannels[policy_->feature], cell = pool * T::kFeatureStrides[policy_->feature];
  const float* x0 = w.trunk_x;
  if (pool > 1) {
    AvgPoolParams ap;
    ap.in_h = H, ap.in_w = W, ap.C = 3, ap.factor = pool, ap.out_h = H / pool, ap.out_w = W / pool;
    ap.x = w.trunk_x, ap.y = w.trunk_mid;
    avg_pool(ap, s);
    x0 = w.trunk_mid;
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
  const int Hp = H / pool, Wp = W / pool;
  int ih = T::conv_out(Hp, 3, 2), iw = T::conv_out(Wp, 3, 2);
  conv_run(x0, Hp, Wp, 3, policy_->stem, T::kStemChannels, 3, 2, false, w.trunk_map[0]);
  int cur = 0;
  const auto& specs = T::blocks();
  for (size_t i = 0; i < policy_->blocks.size(); ++i) {
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
  const float* top = w.trunk_map[cur];  // (ih, iw, C): one cell per `cell` image pixels
  for (int32_t S : levels) {
    const int factor = S * P / cell, wh = gh / S, ww = gw / S;
    auto head = policy_->heads.find(S);
    if (head == policy_->heads.end())
      throw Error(ErrorCode::kBadInput, "the learned policy has no head for windows of " + std::to_string(S) +
                                            " patches: use the levels of the model's merge config");
    if (wh * ww > 0) {
      AvgPoolParams ap;
      ap.in_h = ih, ap.in_w = iw, ap.C = C, ap.factor = factor, ap.out_h = wh, ap.out_w = ww;
      ap.x = top, ap.y = w.pooled;
      avg_pool(ap, s);
      convert_to_bf16(w.pooled, w.pooled_bf16, int64_t(wh) * ww * C, s);
      GemmParams g;
      g.M = wh * ww, g.N = 1, g.K = C, g.lda = C, g.ldc = 1, g.bias = head->second.b.as<float>();
      g.epilogue = Epilogue::kSigmoid, g.c = scores;
      GemmDeviceExtras x_;
      x_.a_bf16 = w.pooled_bf16, x_.w_bf16 = head->second.w.as<uint16_t>();
      gemm(g, x_, s);
    }
    scores += int64_t(wh) * ww;
  }
}

}  // namespace step::cuda::device_model_detail
