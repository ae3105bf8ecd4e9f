// merge.cpp: superpatch planning over a batch; one backend call per step and image.
#include "merge.h"

#include <chrono>

#include "errors.h"

namespace step {
namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

MergePlan plan_merge(Backend& backend, const std::vector<MergeImage>& images, int patch, const MergeSettings& s) {
  using clock = std::chrono::steady_clock;
  MergePlan plan;
  const int levels = s.policy == MergePolicy::kNone ? 0 : int(s.sizes.size());
  STEP_CHECK(levels == 0 || s.thresholds.size() == s.sizes.size(), "merge: one threshold per level");
  if (s.policy == MergePolicy::kLearned)
    throw Error(ErrorCode::kBadModel, "the learned merge policy needs policy weights, which this model does not have");
  for (size_t b = 0; b < images.size(); ++b) {
    const MergeImage& im = images[b];
    const int cells = im.gh * im.gw;
    std::vector<float> scores;
    for (int l = 0; l < levels; ++l) scores.resize(scores.size() + size_t(im.gh / s.sizes[l]) * (im.gw / s.sizes[l]));

    auto t0 = clock::now();
    if (levels > 0) {
      WindowScoreParams w;
      w.image = im.rgb, w.h = im.h, w.w = im.w, w.channels = im.channels, w.patch = patch;
      w.gh = im.gh, w.gw = im.gw, w.levels = levels, w.sizes = s.sizes.data();
      w.color_tau = s.color_tau, w.texture_tau = s.texture_tau, w.scores = scores.data();
      backend.window_score(w);
    }
    plan.score_ms += ms_since(t0);

    t0 = clock::now();
    std::vector<TokenRect> rects(cells);
    std::vector<int32_t> token_of_patch(cells);
    int32_t count = 0;
    SuperpatchSelectParams sp;
    sp.image = int(b), sp.gh = im.gh, sp.gw = im.gw, sp.levels = levels, sp.sizes = s.sizes.data();
    sp.thresholds = s.thresholds.data(), sp.scores = scores.data();
    sp.rects = rects.data(), sp.count = &count, sp.token_of_patch = token_of_patch.data();
    backend.superpatch_select(sp);
    plan.select_ms += ms_since(t0);

    std::vector<int64_t> per_size(levels + 1, 0);
    for (int32_t t = 0; t < count; ++t) {
      int l = 0;
      while (l < levels && s.sizes[l] != rects[t].size) ++l;
      ++per_size[l];
    }
    plan.rects.insert(plan.rects.end(), rects.begin(), rects.begin() + count);
    plan.token_of_patch.push_back(std::move(token_of_patch));
    plan.tokens_per_size.push_back(std::move(per_size));
  }
  return plan;
}

}  // namespace step
