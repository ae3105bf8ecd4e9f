// merge.cpp: superpatch planning over a batch; one backend call per step and image.
#include "merge.h"

#include <chrono>

#include "cost.h"
#include "errors.h"

namespace step {
namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

namespace {

// Learned scores of every level for one image: the padded image normalised with mean = std = 127.5,
// channels last, average-pooled by net.pool, the trunk up to its feature map, then per level: pool the
// map to the window grid, head, sigmoid.
void learned_scores(Backend& backend, const MergeImage& im, int patch, const MergeSettings& s, const MergePolicyNet& net,
                    float* scores, double* gflops) {
  const int H = im.gh * patch, W = im.gw * patch;
  Tensor x({H, W, 3});  // (H, W, 3)
  ImageNormalizeParams n;
  n.src = im.rgb, n.h = im.h, n.w = im.w, n.channels = im.channels;
  for (int c = 0; c < 3; ++c) n.mean[c] = 127.5f, n.std[c] = 127.5f;
  n.out_h = H, n.out_w = W, n.channels_last = true, n.out = x.data();
  backend.image_normalize(n);
  STEP_CHECK(net.pool >= 1 && H % net.pool == 0 && W % net.pool == 0, "learned policy: pool must divide the patch");
  if (net.pool > 1) {
    Tensor small({H / net.pool, W / net.pool, 3});  // (H / pool, W / pool, 3)
    AvgPoolParams ap;
    ap.in_h = H, ap.in_w = W, ap.C = 3, ap.factor = net.pool, ap.out_h = H / net.pool, ap.out_w = W / net.pool;
    ap.x = x.data(), ap.y = small.data();
    backend.avg_pool(ap);
    x = std::move(small);
  }
  std::vector<Tensor> maps = net.trunk.forward(backend, x.data(), 1, H / net.pool, W / net.pool, gflops);
  const Tensor& top = maps.back();  // (1, ch, cw, C): one cell per net.cell() image pixels
  const int ch = int(top.dim(1)), cw = int(top.dim(2)), C = int(top.dim(3));
  for (size_t l = 0; l < s.levels.size(); ++l) {
    const int S = s.levels[l], factor = S * patch / net.cell(), wh = im.gh / S, ww = im.gw / S;
    STEP_CHECK(factor >= 1 && factor * net.cell() == S * patch, "learned policy: window side must be a multiple of the map's cell");
    Tensor pooled({std::max(wh * ww, 1), C});  // (wh, ww, C)
    if (wh * ww > 0) {
      AvgPoolParams ap;
      ap.in_h = ch, ap.in_w = cw, ap.C = C, ap.factor = factor, ap.out_h = wh, ap.out_w = ww;
      ap.x = top.data(), ap.y = pooled.data();
      backend.avg_pool(ap);
      GemmParams g;
      g.M = wh * ww, g.N = 1, g.K = C, g.a = pooled.data(), g.lda = C;
      g.w = net.head_w.at(S).data(), g.bias = net.head_b.at(S).data(), g.epilogue = Epilogue::kSigmoid;
      g.c = scores, g.ldc = 1;
      backend.gemm(g);
      *gflops += gemm_gflops(g.M, g.N, g.K);
    }
    scores += int64_t(wh) * ww;
  }
}

}  // namespace

std::vector<int64_t> tokens_per_level(const TokenRect* rects, int64_t n, const int32_t* levels, int num_levels) {
  std::vector<int64_t> per(size_t(num_levels) + 1, 0);
  for (int64_t t = 0; t < n; ++t) {
    int l = 0;
    while (l < num_levels && levels[l] != rects[t].size) ++l;
    ++per[size_t(l)];
  }
  return per;
}

MergePlan plan_merge(Backend& backend, const std::vector<MergeImage>& images, int patch, const MergeSettings& s,
                     const MergePolicyNet* policy) {
  using clock = std::chrono::steady_clock;
  MergePlan plan;
  const int num_levels = s.policy == MergePolicy::kNone ? 0 : int(s.levels.size());
  STEP_CHECK(num_levels == 0 || s.thresholds.size() == s.levels.size(), "merge: one threshold per level");
  if (s.policy == MergePolicy::kLearned && !policy)
    throw Error(ErrorCode::kBadModel, "the learned merge policy needs policy weights (policy.trunk.*, policy.heads.*), "
                                      "which this model does not have: use policy 'similarity'");
  for (size_t b = 0; b < images.size(); ++b) {
    const MergeImage& im = images[b];
    const int cells = im.gh * im.gw;
    std::vector<float> scores;
    for (int l = 0; l < num_levels; ++l) scores.resize(scores.size() + size_t(im.gh / s.levels[l]) * (im.gw / s.levels[l]));

    auto t0 = clock::now();
    if (s.policy == MergePolicy::kLearned) {
      learned_scores(backend, im, patch, s, *policy, scores.data(), &plan.gflops);
    } else if (num_levels > 0) {
      WindowScoreParams w;
      w.image = im.rgb, w.h = im.h, w.w = im.w, w.channels = im.channels, w.patch = patch;
      w.gh = im.gh, w.gw = im.gw, w.num_levels = num_levels, w.levels = s.levels.data();
      w.color_tau = s.color_tau, w.texture_tau = s.texture_tau, w.scores = scores.data();
      backend.window_score(w);
    }
    plan.score_ms += ms_since(t0);

    t0 = clock::now();
    std::vector<TokenRect> rects(cells);
    std::vector<int32_t> token_of_patch(cells);
    int32_t count = 0;
    SuperpatchSelectParams sp;
    sp.image = int(b), sp.gh = im.gh, sp.gw = im.gw, sp.num_levels = num_levels, sp.levels = s.levels.data();
    sp.thresholds = s.thresholds.data(), sp.scores = scores.data();
    sp.rects = rects.data(), sp.count = &count, sp.token_of_patch = token_of_patch.data();
    backend.superpatch_select(sp);
    plan.select_ms += ms_since(t0);

    plan.rects.insert(plan.rects.end(), rects.begin(), rects.begin() + count);
    plan.token_of_patch.push_back(std::move(token_of_patch));
    plan.tokens_per_size.push_back(tokens_per_level(rects.data(), count, s.levels.data(), num_levels));
  }
  return plan;
}

}  // namespace step
