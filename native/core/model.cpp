// model.cpp: weight validation and the ViT forward over a packed token list.
// The forward mirrors timm's VisionTransformer.forward_features (patch_embed, _pos_embed, norm_pre,
// blocks, norm) followed by the segmentation head and unsharing. Each step is one backend call; the
// GEMM epilogues fuse what timm runs as separate ops (bias, GELU, layer scale, residual add).
#include "model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>

#include "cost.h"

namespace step {
namespace {


// The tensors a config needs, with their shapes.
std::map<std::string, std::vector<int64_t>> expected_tensors(const VitConfig& c) {
  const int64_t C = c.embed_dim, P = c.patch, Hd = c.mlp_hidden;
  std::map<std::string, std::vector<int64_t>> t;
  t["patch_embed.proj.weight"] = {C, 3, P, P};
  if (!c.pre_norm) t["patch_embed.proj.bias"] = {C};  // timm: PatchEmbed(bias=not pre_norm)
  if (c.class_token) t["cls_token"] = {1, 1, C};
  if (c.reg_tokens) t["reg_token"] = {1, c.reg_tokens, C};
  t["pos_embed"] = {1, (c.no_embed_class ? 0 : c.prefix()) + int64_t(c.grid_h) * c.grid_w, C};
  if (c.pre_norm) t["norm_pre.weight"] = t["norm_pre.bias"] = {C};
  for (int i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    t[b + "norm1.weight"] = t[b + "norm1.bias"] = {C};
    t[b + "attn.qkv.weight"] = {3 * C, C};
    if (c.qkv_bias) t[b + "attn.qkv.bias"] = {3 * C};
    t[b + "attn.proj.weight"] = {C, C};
    t[b + "attn.proj.bias"] = {C};
    t[b + "norm2.weight"] = t[b + "norm2.bias"] = {C};
    t[b + "mlp.fc1.weight"] = {Hd, C};
    t[b + "mlp.fc1.bias"] = {Hd};
    t[b + "mlp.fc2.weight"] = {C, Hd};
    t[b + "mlp.fc2.bias"] = {C};
    if (c.layer_scale) t[b + "ls1.gamma"] = t[b + "ls2.gamma"] = {C};
  }
  t["norm.weight"] = t["norm.bias"] = {C};
  if (c.num_classes > 0) {
    t["decoder.head.weight"] = {c.num_classes, C};
    t["decoder.head.bias"] = {c.num_classes};
  }
  for (int side : c.policy_levels) {
    t["policy.heads." + std::to_string(side) + ".weight"] = {c.policy_outputs, EffNetTrunk::kFeatureChannels[c.policy_feature]};
    t["policy.heads." + std::to_string(side) + ".bias"] = {c.policy_outputs};
  }
  for (int layer : c.exit_layers) {
    const std::string e = "exit_heads." + std::to_string(layer) + ".";
    t[e + "norm.weight"] = t[e + "norm.bias"] = {C};
    t[e + "head.weight"] = {c.num_classes, C};
    t[e + "head.bias"] = {c.num_classes};
  }
  return t;
}

// Tensors a timm checkpoint may carry that a segmentation model does not use (the ImageNet head).
bool ignorable(const std::string& name) {
  return name == "head.weight" || name == "head.bias" || name == "fc_norm.weight" || name == "fc_norm.bias";
}


double since_ms(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::map<std::string, Tensor> load_weights(const VitConfig& cfg, const uint8_t* data, size_t size,
                                           const std::vector<TensorEntry>& entries) {
  return load_weights(cfg, MemorySource(data, size), entries);
}

std::map<std::string, Tensor> load_weights(const VitConfig& cfg, const ByteSource& src, const std::vector<TensorEntry>& entries) {
  const auto expected = expected_tensors(cfg);
  std::map<std::string, const TensorEntry*> by_name;
  for (const TensorEntry& e : entries) {
    if (!by_name.emplace(e.name, &e).second)
      throw Error(ErrorCode::kBadModel, "tensor " + e.name + " appears twice in the weights file");
    const bool trunk = !cfg.policy_levels.empty() && e.name.rfind("policy.trunk.", 0) == 0;  // load_effnet_weights
    if (!expected.count(e.name) && !ignorable(e.name) && !trunk)
      throw Error(ErrorCode::kBadModel, "unexpected tensor " + e.name + " " + shape_str(e.shape) +
                                            ": the config does not describe it (depth " + std::to_string(cfg.depth) +
                                            ", class_token " + (cfg.class_token ? "true" : "false") +
                                            ", reg_tokens " + std::to_string(cfg.reg_tokens) + ")");
  }
  std::map<std::string, Tensor> weights;
  for (const auto& [name, shape] : expected) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw Error(ErrorCode::kBadModel, "missing tensor " + name + ": expected shape " + shape_str(shape));
    weights.emplace(name, read_tensor(*it->second, shape, src, "the config"));
  }
  return weights;
}

std::unique_ptr<VitModel> load_vit_model(const VitConfig& cfg, const uint8_t* data, size_t size,
                                         const std::vector<TensorEntry>& entries) {
  return load_vit_model(cfg, MemorySource(data, size), entries);
}

std::unique_ptr<VitModel> load_vit_model(const VitConfig& cfg, const ByteSource& src, const std::vector<TensorEntry>& entries) {
  auto weights = load_weights(cfg, src, entries);
  std::unique_ptr<MergePolicyNet> policy;
  if (!cfg.policy_levels.empty()) {
    EffNetConfig ec;
    ec.features = cfg.policy_feature + 1;
    EffNetTrunk trunk(ec, load_effnet_weights("policy.trunk.", src, entries, ec));
    policy = std::make_unique<MergePolicyNet>(MergePolicyNet{std::move(trunk), cfg.policy_pool, {}, {}});
    const int C = EffNetTrunk::kFeatureChannels[cfg.policy_feature];
    for (int side : cfg.policy_levels) {
      const std::string name = "policy.heads." + std::to_string(side);
      Tensor w = std::move(weights.at(name + ".weight")), b = std::move(weights.at(name + ".bias"));
      weights.erase(name + ".weight"), weights.erase(name + ".bias");
      Tensor hw({1, C}), hb({1});
      for (int k = 0; k < C; ++k)  // softmax over 2: p(merge) = sigmoid(l1 - l0)
        hw.data()[k] = cfg.policy_outputs == 2 ? w.data()[C + k] - w.data()[k] : w.data()[k];
      hb.data()[0] = cfg.policy_outputs == 2 ? b.data()[1] - b.data()[0] : b.data()[0];
      policy->head_w.emplace(side, std::move(hw));
      policy->head_b.emplace(side, std::move(hb));
    }
  }
  return std::make_unique<VitModel>(cfg, std::move(weights), std::move(policy));
}

VitModel::VitModel(VitConfig cfg, std::map<std::string, Tensor> weights, std::unique_ptr<MergePolicyNet> policy)
    : cfg_(cfg), weights_(std::move(weights)), policy_(std::move(policy)) {
  double mb = 64;
  if (const char* env = std::getenv("STEP_SEG_POS_CACHE_MB")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v >= 0 && v < 1e9) mb = v;
  }
  pos_limit_ = size_t(mb * 1048576.0);
}

const Tensor& VitModel::w(const std::string& name) const {
  auto it = weights_.find(name);
  STEP_CHECK(it != weights_.end(), "weight " + name + " not loaded");
  return it->second;
}
const float* VitModel::w_or_null(const std::string& name) const {
  auto it = weights_.find(name);
  return it == weights_.end() ? nullptr : it->second.data();
}

std::shared_ptr<const Tensor> VitModel::pos_grid(Backend& backend, int gh, int gw) {
  std::lock_guard<std::mutex> lock(pos_mutex_);
  auto key = std::make_pair(gh, gw);
  auto it = pos_cache_.find(key);
  if (it != pos_cache_.end()) {
    it->second.used = ++pos_clock_;
    return it->second.grid;
  }
  const int C = cfg_.embed_dim;
  const float* trained = w("pos_embed").data() + (cfg_.no_embed_class ? 0 : int64_t(cfg_.prefix()) * C);
  auto grid = std::make_shared<Tensor>(std::vector<int64_t>{gh, gw, C});
  if (gh == cfg_.grid_h && gw == cfg_.grid_w) {
    std::memcpy(grid->data(), trained, grid->numel() * sizeof(float));
  } else {
    PosResampleParams p;
    p.C = C, p.src_h = cfg_.grid_h, p.src_w = cfg_.grid_w, p.src = trained;
    p.dst_h = gh, p.dst_w = gw, p.dst = grid->data();
    backend.pos_resample(p);
  }
  const size_t bytes = grid->numel() * sizeof(float);
  // make room: least recently used first (a grid larger than the whole limit is used, not kept)
  while (!pos_cache_.empty() && pos_bytes_ + bytes > pos_limit_) {
    auto oldest = pos_cache_.begin();
    for (auto i = pos_cache_.begin(); i != pos_cache_.end(); ++i)
      if (i->second.used < oldest->second.used) oldest = i;
    pos_bytes_ -= oldest->second.grid->numel() * sizeof(float);
    pos_cache_.erase(oldest);
  }
  if (bytes <= pos_limit_) {
    pos_cache_.emplace(key, PosEntry{grid, ++pos_clock_});
    pos_bytes_ += bytes;
  }
  return grid;
}

VitModel::PosCacheInfo VitModel::pos_cache_info() {
  std::lock_guard<std::mutex> lock(pos_mutex_);
  return {pos_cache_.size(), pos_bytes_, pos_limit_};
}

EncoderOutput VitModel::forward(Backend& backend, const EncoderInput& in) {
  using clock = std::chrono::steady_clock;
  const VitConfig& c = cfg_;
  const int B = in.images, C = c.embed_dim, P = c.patch, H = c.heads, pre = c.prefix();
  EncoderOutput out;
  ForwardStats& st = out.stats;
  auto t0 = clock::now();

  // Token rects: the caller's superpatches, or the dense case, one rect per patch, row-major.
  std::vector<TokenRect> rects = in.rects;
  std::vector<int32_t> grid_w(B), grid_h(B);
  out.grid_offset.resize(B);
  int64_t cells = 0;
  for (int b = 0; b < B; ++b) {
    auto [gh, gw] = in.grids[b];
    out.grid_offset[b] = int32_t(cells), grid_w[b] = gw, grid_h[b] = gh;
    cells += int64_t(gh) * gw;
    if (in.rects.empty())
      for (int r = 0; r < gh; ++r)
        for (int col = 0; col < gw; ++col) rects.push_back({b, r, col, 1});
  }
  out.offsets.assign(B + 1, 0);
  {
    size_t j = 0;
    for (int b = 0; b < B; ++b) {
      int64_t n = 0;
      while (j < rects.size() && rects[j].image == b) ++j, ++n;
      out.offsets[b + 1] = int32_t(out.offsets[b] + pre + n);
    }
  }
  const int Tp = int(rects.size());
  int A = out.offsets[B];  // active tokens: shrinks at every early exit
  st.dense_tokens = int64_t(cells) + int64_t(B) * pre;
  st.input_tokens = A;
  st.dense_gflops = dense_gflops(c, in.grids);

  // Position embeddings of each image's grid, concatenated in grid order.
  Tensor pos({cells, C});
  for (int b = 0; b < B; ++b) {
    const std::shared_ptr<const Tensor> g = pos_grid(backend, in.grids[b].first, in.grids[b].second);
    std::memcpy(pos.data() + int64_t(out.grid_offset[b]) * C, g->data(), g->numel() * sizeof(float));
  }

  auto capture = [&](const std::string& name, const Tensor& t, int rows) {
    if (!in.capture) return;
    Tensor copy({rows, C});
    std::memcpy(copy.data(), t.data(), copy.numel() * sizeof(float));
    out.captured.emplace_back(name, std::move(copy));
  };
  auto gemm_flops = [&](int64_t M, int64_t N, int64_t K) { st.gflops += gemm_gflops(M, N, K); };

  // Patch embedding: im2col of every rect, then one GEMM with the conv weight.
  Tensor cols({Tp, 3 * P * P});  // (Tp, 3 * P * P)
  {
    PatchGatherParams g;
    g.images = B, g.height = in.height, g.width = in.width, g.patch = P, g.pixels = in.pixels;
    g.tokens = Tp, g.rects = rects.data(), g.out = cols.data();
    backend.patch_gather(g);
  }
  Tensor embedded({Tp, C});  // (Tp, C)
  {
    GemmParams g;
    g.M = Tp, g.N = C, g.K = 3 * P * P, g.a = cols.data(), g.lda = g.K;
    g.w = w("patch_embed.proj.weight").data(), g.bias = w_or_null("patch_embed.proj.bias");
    g.w_packed = packed_.get(backend, "patch_embed.proj.weight", g.w, g.N, g.K);
    g.c = embedded.data(), g.ldc = C;
    backend.gemm(g);
    gemm_flops(g.M, g.N, g.K);
  }
  capture("patch_embed", embedded, Tp);

  // Packed list: prefix tokens, then each rect's embedding plus its position embedding.
  Tensor x({A, C});  // (A, C) the residual stream
  std::vector<float> prefix_tokens(size_t(pre) * C);
  if (c.class_token) std::memcpy(prefix_tokens.data(), w("cls_token").data(), C * sizeof(float));
  if (c.reg_tokens)
    std::memcpy(prefix_tokens.data() + (c.class_token ? C : 0), w("reg_token").data(), size_t(c.reg_tokens) * C * 4);
  {
    TokenPosEmbedParams t;
    t.batch = B, t.C = C, t.prefix = pre, t.prefix_tokens = prefix_tokens.data();
    t.pos_prefix = c.no_embed_class ? nullptr : w("pos_embed").data();
    t.pos_grid = pos.data(), t.grid_offset = out.grid_offset.data(), t.grid_w = grid_w.data();
    t.offsets = out.offsets.data(), t.rects = rects.data(), t.embedded = embedded.data(), t.out = x.data();
    backend.token_pos_embed(t);
  }
  capture("tokens_0", x, A);
  auto layernorm = [&](const Tensor& src, const std::string& name, Tensor& dst) {
    LayerNormParams n;
    n.rows = A, n.C = C, n.eps = c.norm_eps, n.x = src.data();
    n.gamma = w(name + ".weight").data(), n.beta = w(name + ".bias").data(), n.y = dst.data();
    backend.layernorm(n);
  };
  if (c.pre_norm) {
    Tensor normed({A, C});
    layernorm(x, "norm_pre", normed);
    x = std::move(normed);
  }
  st.ms.emplace_back("embed", since_ms(t0));

  // rect_of_row: the rect each active row carries (-1 for prefix tokens); compacted with the rows.
  // rect_exit: the blocks each rect went through, all of them until an exit halts it.
  std::vector<int32_t> rect_of_row(A);
  out.rect_exit.resize(Tp);
  {
    TokenRowsInitParams ri;
    ri.batch = B, ri.prefix = pre, ri.depth = c.depth, ri.offsets = out.offsets.data();
    ri.rect_of_row = rect_of_row.data(), ri.rect_exit = out.rect_exit.data();
    backend.token_rows_init(ri);
  }
  const int K = c.num_classes;
  Tensor rect_logits({Tp, K});                   // (Tp, K) logits of each rect, from its exit or the head
  std::vector<int> exits = in.prune.enabled ? in.prune.layers : std::vector<int>{};
  STEP_CHECK(exits.empty() || in.prune.agree == 0 || in.prune.agree == 1, "forward: prune.agree not set");
  std::vector<int32_t> cell_label(in.prune.agree == 1 ? cells : 0);  // (cells) labels for agreement

  // Encoder blocks: x += ls1 * proj(attn(norm1(x))); x += ls2 * fc2(gelu(fc1(norm2(x)))), with an
  // early exit after every block listed in exits: halted tokens file their logits and leave the list.
  t0 = clock::now();
  Tensor h({A, C}), qkv({A, 3 * C}), att({A, C}), mlp({A, c.mlp_hidden});
  auto linear = [&](const Tensor& a, int Kdim, const std::string& name, int N, Tensor& dst, Epilogue ep,
                    const float* scale) {
    GemmParams g;
    g.M = A, g.N = N, g.K = Kdim, g.a = a.data(), g.lda = Kdim;
    g.w = w(name + ".weight").data(), g.bias = w_or_null(name + ".bias");
    g.w_packed = packed_.get(backend, name + ".weight", g.w, N, Kdim);
    g.epilogue = ep, g.residual = ep == Epilogue::kResidual ? dst.data() : nullptr, g.col_scale = scale;
    g.c = dst.data(), g.ldc = N;
    backend.gemm(g);
    gemm_flops(g.M, g.N, g.K);
  };
  int group_start = 0;
  double halt_ms = 0;
  for (int i = 0; i < c.depth; ++i) {
    const std::string blk = "blocks." + std::to_string(i) + ".";
    st.per_block.push_back(A);
    int64_t sum_t2 = 0;
    for (int b = 0; b < B; ++b) sum_t2 += int64_t(out.offsets[b + 1] - out.offsets[b]) * (out.offsets[b + 1] - out.offsets[b]);
    layernorm(x, blk + "norm1", h);
    linear(h, C, blk + "attn.qkv", 3 * C, qkv, Epilogue::kNone, nullptr);
    AttentionParams ap;
    ap.batch = B, ap.offsets = out.offsets.data(), ap.heads = H, ap.head_dim = C / H;
    ap.scale = 1.f / std::sqrt(float(C / H)), ap.qkv = qkv.data(), ap.out = att.data();
    backend.attention(ap);
    st.gflops += attention_gflops(sum_t2, C);
    linear(att, C, blk + "attn.proj", C, x, Epilogue::kResidual, w_or_null(blk + "ls1.gamma"));
    layernorm(x, blk + "norm2", h);
    linear(h, C, blk + "mlp.fc1", c.mlp_hidden, mlp, Epilogue::kGelu, nullptr);
    linear(mlp, c.mlp_hidden, blk + "mlp.fc2", C, x, Epilogue::kResidual, w_or_null(blk + "ls2.gamma"));
    capture("block_" + std::to_string(i), x, A);

    if (std::find(exits.begin(), exits.end(), i + 1) == exits.end()) continue;
    // Early exit after block i: exit head (LayerNorm + linear), halting, filing, compaction; timed
    // as 'halt' (summed over the exits), apart from the block groups.
    st.ms.emplace_back("blocks " + std::to_string(group_start) + "-" + std::to_string(i), since_ms(t0));
    t0 = clock::now();
    const std::string ex = "exit_heads." + std::to_string(i + 1) + ".";
    Tensor exit_logits({A, K});
    layernorm(x, ex + "norm", h);
    linear(h, C, ex + "head", K, exit_logits, Epilogue::kNone, nullptr);
    if (!all_finite(exit_logits.data(), exit_logits.numel()))
      throw NonFiniteError("logits of the exit head after block " + std::to_string(i + 1));
    std::vector<uint8_t> halt(A);
    TokenHaltParams th;
    th.batch = B, th.K = K, th.prefix = pre, th.offsets = out.offsets.data(), th.logits = exit_logits.data();
    th.threshold = in.prune.threshold, th.top_k = in.prune.top_k, th.halt = halt.data();
    if (in.prune.agree == 1) {
      th.rect_of_row = rect_of_row.data(), th.rects = rects.data(), th.grid_offset = out.grid_offset.data();
      th.grid_h = grid_h.data(), th.grid_w = grid_w.data(), th.cell_label = cell_label.data();
    }
    backend.token_halt(th);
    TokenScatterParams sc;
    sc.rows = A, sc.K = K, sc.src = exit_logits.data(), sc.index = rect_of_row.data(), sc.mask = halt.data();
    sc.table = rect_logits.data();
    backend.token_scatter(sc);
    std::vector<int32_t> new_offsets(B + 1), src_row(A);
    Tensor kept({A, C});
    TokenCompactParams tc;
    tc.batch = B, tc.C = C, tc.offsets = out.offsets.data(), tc.halt = halt.data(), tc.x = x.data();
    tc.out = kept.data(), tc.new_offsets = new_offsets.data(), tc.src_row = src_row.data();
    backend.token_compact(tc);
    TokenExitMarkParams em;
    em.rows = A, em.layer = i + 1, em.halt = halt.data(), em.rect_of_row = rect_of_row.data();
    em.rect_exit = out.rect_exit.data();
    backend.token_exit_mark(em);
    int64_t halted = 0;
    for (int r = 0; r < A; ++r) halted += halt[r] && rect_of_row[r] >= 0;
    st.halted.push_back(halted);
    const int new_a = new_offsets[B];
    std::vector<int32_t> new_rect_of_row(new_a);
    TokenGatherParams tg;
    tg.rows = new_a, tg.src_row = src_row.data(), tg.in = rect_of_row.data(), tg.out = new_rect_of_row.data();
    backend.token_gather(tg);
    rect_of_row.swap(new_rect_of_row);
    out.offsets.swap(new_offsets);
    A = new_a;
    x = std::move(kept);
    x.reset({A, C});
    halt_ms += since_ms(t0);
    t0 = clock::now();
    group_start = i + 1;
  }
  out.tokens.reset({A, C});
  layernorm(x, "norm", out.tokens);
  capture("final_norm", out.tokens, A);
  if (K == 0 && !all_finite(out.tokens.data(), out.tokens.numel())) throw NonFiniteError("final-norm features");
  st.ms.emplace_back(group_start == 0 ? "encoder" : "blocks " + std::to_string(group_start) + "-" + std::to_string(c.depth - 1),
                     since_ms(t0));
  if (!exits.empty()) st.ms.emplace_back("halt", halt_ms);

  // Segmentation head on the tokens still active, then unsharing of every rect's logits.
  if (K > 0) {
    t0 = clock::now();
    Tensor logits({A, K});  // (A, K); prefix rows are computed and never filed
    linear(out.tokens, C, "decoder.head", K, logits, Epilogue::kNone, nullptr);
    if (!all_finite(logits.data(), logits.numel())) throw NonFiniteError("logits of the segmentation head");
    st.ms.emplace_back("head", since_ms(t0));
    // Unsharing, timed as 'unshare': each rect's logits from its row, then onto every cell it covers.
    t0 = clock::now();
    TokenScatterParams sc;
    sc.rows = A, sc.K = K, sc.src = logits.data(), sc.index = rect_of_row.data(), sc.table = rect_logits.data();
    backend.token_scatter(sc);
    out.grid_logits.reset({cells, K});
    UnshareParams u;
    u.K = K, u.tokens = Tp, u.rects = rects.data(), u.logits = rect_logits.data();
    u.grid_offset = out.grid_offset.data(), u.grid_w = grid_w.data(), u.grid = out.grid_logits.data();
    u.mode = in.unshare, u.grid_h = grid_h.data();
    Tensor flat(in.unshare == UnshareMode::kBlend ? std::vector<int64_t>{cells, K} : std::vector<int64_t>{0});
    u.flat = flat.data();
    backend.unshare(u);
    st.ms.emplace_back("unshare", since_ms(t0));
  }
  return out;
}

}  // namespace step
