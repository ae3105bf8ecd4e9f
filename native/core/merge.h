// merge.h: planning the superpatches of a batch (STEP's dCTS half): score windows with the chosen
// scorer, select superpatches largest level first, and report where every patch went.
#pragma once
#include <cstdint>
#include <vector>

#include <map>

#include "backend.h"
#include "effnet.h"

namespace step {

enum class MergePolicy { kNone, kSimilarity, kLearned };

// The learned scorer: an EfficientNet-Lite0 trunk, possibly truncated, and one head per level on one
// of its feature maps. The padded, normalised image is first average-pooled by `pool` (1, 2 or 4); the
// trunk runs up to feature map `feature` (stride 2^(feature+1) of its input, so a cell covers
// pool * 2^(feature+1) image pixels: 32 for the full trunk at full size, or feature 3 of a half-size
// input). For a window side S the map is average-pooled over the S * P / cell cells of each window side
// and the head gives one logit per window: score = sigmoid(logit). (A two-output softmax head is stored
// as the difference of its rows: softmax(l)[1] = sigmoid(l1 - l0).)
struct MergePolicyNet {
  EffNetTrunk trunk;
  int pool = 1;                  // input average-pooling factor
  std::map<int, Tensor> head_w;  // per level side S: (1, C), C the map's channels
  std::map<int, Tensor> head_b;  // per level side S: (1)
  int feature() const { return trunk.config().features - 1; }
  int cell() const { return pool * EffNetTrunk::kFeatureStrides[feature()]; }  // image pixels per map cell
};

struct MergeSettings {
  MergePolicy policy = MergePolicy::kNone;
  std::vector<int32_t> levels;      // window sides in patches, largest first (e.g. 8, 4, 2)
  std::vector<float> thresholds;    // one per level; a window merges when its score >= threshold
  float color_tau = 0.f, texture_tau = 0.f;  // similarity scorer scales (ops.h, WindowScoreParams); no
                                             // default here: lib/config.ts (kDefaultMerge)
  UnshareMode unshare = UnshareMode::kUnset;  // UnshareParams; lib/config.ts, or kCopy with merging off
};

struct MergeImage {
  const uint8_t* rgb = nullptr;  // (h, w, channels) resized image
  int h = 0, w = 0, channels = 3;
  int gh = 0, gw = 0;            // its patch grid
};

struct MergePlan {
  std::vector<TokenRect> rects;                       // every image's tokens, image order
  std::vector<std::vector<int32_t>> token_of_patch;   // per image (gh, gw): token index within the image
  std::vector<std::vector<int64_t>> tokens_per_size;  // per image: tokens of each level's size, then 1 x 1
  double score_ms = 0, select_ms = 0, gflops = 0;
};

// Tokens of each level's size among n rects, then the 1 x 1 ones (MergePlan::tokens_per_size): a rect
// of side levels[l] counts at l, any other side (1) at num_levels.
std::vector<int64_t> tokens_per_level(const TokenRect* rects, int64_t n, const int32_t* levels, int num_levels);

// Plans one batch. kNone gives the dense plan (one token per patch, row-major). kLearned needs `policy`.
MergePlan plan_merge(Backend& backend, const std::vector<MergeImage>& images, int patch, const MergeSettings& s,
                     const MergePolicyNet* policy);

}  // namespace step
