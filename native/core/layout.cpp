// layout.cpp: see layout.h.
#include "layout.h"

#include <algorithm>

#include "cost.h"

namespace step {

std::vector<int> tile_origins(int g, int t, int s) {
  if (g <= t) return {0};
  std::vector<int> o;
  for (int at = 0; at + t < g; at += s) o.push_back(at);
  o.push_back(g - t);
  return o;
}

std::vector<Tile> tile_layout(int gh, int gw, int patch, const TileSettings& tile) {
  const int t = tile.size / patch, s = std::max(1, tile.stride / patch);
  std::vector<Tile> tiles;
  for (int oy : tile_origins(gh, t, s))
    for (int ox : tile_origins(gw, t, s)) tiles.push_back({oy, ox, std::min(t, gh), std::min(t, gw)});
  return tiles;
}

SegmentPlan plan_segment(const VitConfig& c, const SegmentPlanRequest& r, int threads) {
  const int P = c.patch, pre = c.prefix();
  SegmentPlan plan;
  for (const PlanImage& im : r.images) {
    SegmentPlan::Image i;
    i.gh = (im.h + P - 1) / P, i.gw = (im.w + P - 1) / P;
    const int64_t cells = int64_t(i.gh) * i.gw;
    i.result_bytes = result_bytes(c, int64_t(im.out_w) * im.out_h, cells, r.want_probs, r.want_logits);
    plan.images.push_back(i);
  }
  if (r.tile.size == 0) {
    ForwardShape s;
    s.images = int64_t(r.images.size()), s.learned_policy = r.learned_policy;
    int64_t H = 0, W = 0;
    for (const SegmentPlan::Image& i : plan.images) {
      const int64_t cells = int64_t(i.gh) * i.gw;
      s.cells += cells;
      H = std::max(H, int64_t(i.gh) * P), W = std::max(W, int64_t(i.gw) * P);
      s.largest_pixels = std::max(s.largest_pixels, cells * P * P), s.largest_tokens = std::max(s.largest_tokens, cells);
    }
    s.padded_pixels = s.images * H * W;
    plan.forwards.push_back({s.cells + s.images * pre, forward_bytes(c, s, threads), 1});
  } else {
    const int t = r.tile.size / P, st = std::max(1, r.tile.stride / P);
    for (SegmentPlan::Image& i : plan.images) {
      i.tiles = int64_t(tile_origins(i.gh, t, st).size()) * int64_t(tile_origins(i.gw, t, st).size());
      const int64_t cells = int64_t(std::min(t, i.gh)) * std::min(t, i.gw), pixels = cells * P * P;
      ForwardShape s;
      s.images = 1, s.cells = cells, s.padded_pixels = pixels, s.largest_pixels = pixels, s.largest_tokens = cells;
      s.learned_policy = r.learned_policy;
      // one tile at a time, plus its crop (uint8 RGB), plus the image's running sums' weights
      plan.forwards.push_back({cells + pre, forward_bytes(c, s, threads) + 3 * double(pixels), i.tiles});
      i.result_bytes += 4 * double(int64_t(i.gh) * i.gw);
    }
  }
  for (const SegmentPlan::Forward& f : plan.forwards)
    plan.tokens = std::max(plan.tokens, f.tokens), plan.forward_bytes = std::max(plan.forward_bytes, f.bytes);
  for (const SegmentPlan::Image& i : plan.images) plan.result_bytes += i.result_bytes;
  return plan;
}

FeaturesPlan plan_features(const VitConfig& c, int n, int h, int w, bool capture, int threads) {
  const int P = c.patch;
  const int64_t per_image = int64_t(h / P) * (w / P), T = per_image + c.prefix();
  ForwardShape s;
  s.images = n, s.cells = n * per_image, s.padded_pixels = int64_t(n) * h * w, s.largest_pixels = int64_t(h) * w;
  s.largest_tokens = per_image;
  FeaturesPlan plan;
  plan.tokens = n * T;
  plan.forward_bytes = forward_bytes(c, s, threads);
  // the tokens returned, and with capture a copy after every block (and the embedding, tokens_0, final norm)
  plan.result_bytes = 4 * double(n) * T * c.embed_dim * (1 + (capture ? c.depth + 3 : 0));
  return plan;
}

FeaturesPlan plan_trunk_features(int n, int h, int w) {
  FeaturesPlan plan;
  plan.tokens = int64_t(n) * h * w;
  plan.forward_bytes = trunk_forward_bytes(int64_t(n) * h * w);
  return plan;
}

}  // namespace step
