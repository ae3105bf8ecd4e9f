// layout.h: the one home of a segment() call's layout and of what it reserves: where the tiles of an
// image fall (segment.cpp runs them), and, from the images' sizes alone, the patch grids, the tokens
// of each forward and the bytes each forward and each result holds (cost.h: forward_bytes,
// result_bytes). lib/ asks for the plan before the call (NativeModel.planSegment, planFeatures),
// refuses what exceeds its limits and reserves the bytes (lib/memory.ts); it computes none of it.
//
// Tiles (mmsegmentation's slide mode): along each axis of g patches, a tile of t patches starts every
// s patches, and the last one ends flush with the edge (g - t); an axis of at most t patches is one
// tile of g. So every tile of an image has the same grid, min(t, gh) x min(t, gw).
#pragma once
#include <cstdint>
#include <vector>

#include "model.h"

namespace step {

struct TileSettings {
  int size = 0, stride = 0;  // pixels, multiples of P; size 0: no tiling
};

// One tile, in patches: its origin in the image's grid and its own grid.
struct Tile {
  int oy = 0, ox = 0, gh = 0, gw = 0;
};

// The tile origins along an axis of g patches, tiles of t patches every s (s >= 1).
std::vector<int> tile_origins(int g, int t, int s);

// The tiles of an image of gh x gw patches, row-major (the order segment.cpp runs them in).
std::vector<Tile> tile_layout(int gh, int gw, int patch, const TileSettings& tile);

// ---- the plan of one segment() call ---------------------------------------------------------------
struct PlanImage {
  int w = 0, h = 0;          // the resized image the engine runs on
  int out_w = 0, out_h = 0;  // the label map
};

struct SegmentPlanRequest {
  std::vector<PlanImage> images;
  TileSettings tile;
  bool learned_policy = false;  // the learned merge policy's CNN runs (merging on, policy 'learned')
  bool want_probs = false, want_logits = false;
};

struct SegmentPlan {
  // A forward's shape and how many forwards of it run: untiled, one over the whole batch; tiled, one
  // entry per image (its tiles share one grid), `count` its tiles.
  struct Forward {
    int64_t tokens = 0;  // patches + prefix tokens, before merging
    double bytes = 0;    // the engine's peak while it runs (with tiles: plus the tile's crop)
    int64_t count = 0;
  };
  struct Image {
    int gh = 0, gw = 0;     // the patch grid (token map, logits)
    int64_t tiles = 1;
    double result_bytes = 0;  // its result arrays (with tiles: plus the running sums' weights)
  };
  std::vector<Forward> forwards;
  std::vector<Image> images;
  int64_t tokens = 0;        // the most tokens of one forward
  double forward_bytes = 0;  // the largest forward's bytes (one forward runs at a time)
  double result_bytes = 0;   // every image's
};

// `threads`: the CPU backend's thread count (attention's per-thread scratch).
SegmentPlan plan_segment(const VitConfig& c, const SegmentPlanRequest& r, int threads);

// forwardFeatures over n images of h x w pixels (multiples of the patch size for a ViT).
struct FeaturesPlan {
  int64_t tokens = 0;
  double forward_bytes = 0, result_bytes = 0;  // result: the tokens, and with `capture` every intermediate
};
FeaturesPlan plan_features(const VitConfig& c, int n, int h, int w, bool capture, int threads);
// A bare EfficientNet-Lite0 trunk: its pixels count as tokens (the limit of a ViT of patch 1), and
// no results are reserved beyond the forward's.
FeaturesPlan plan_trunk_features(int n, int h, int w);

}  // namespace step
