// segment.h: one segment() call, backend-neutral: from the resized uint8 images to the label maps,
// probabilities, patch logits and token maps in the caller's arrays, with the per-image stats. On the
// CPU it normalises, scores and plans the merge, runs the encoder (embedding, blocks, exits,
// unsharing), upsamples with argmax and files the token map; on the GPU (a DeviceSegmenter) the
// untiled call runs there whole and its result is filed here; tiles run one encoder forward each on
// the model's device, with the rest on the CPU.
//
// With `tile`, each image is run as overlapping tiles of size x size pixels at the given stride (the
// last tile of a row or column ends at the image's edge, as mmsegmentation's slide mode: layout.h
// places them), one tile per forward, and the patch-grid logits of the tiles are averaged where they overlap before upsampling.
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"
#include "layout.h"
#include "merge.h"
#include "model.h"

namespace step {

// ---- the GPU engine, as core sees it (native/cuda/device_model.h implements it) --------------------
struct DeviceSegmentImage {
  const uint8_t* rgb = nullptr;  // (h, w, channels) uint8, the resized image
  int h = 0, w = 0, channels = 3;
  int out_h = 0, out_w = 0;      // label map size
};
struct DeviceSegmentRequest {
  std::vector<DeviceSegmentImage> images;
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};  // 0..255 pixel units
  MergeSettings merge;                 // planned on the device, with either scorer
  PruneSettings prune;
  bool want_probs = false, want_logits = false;
};
struct DeviceSegmentResult {
  EncoderOutput enc;   // offsets, rect_exit, stats; grid_logits when want_logits
  MergePlan plan;      // rects, token_of_patch, tokens_per_size as selected on the device
  std::vector<std::vector<int32_t>> labels;  // per image (out_h, out_w)
  std::vector<std::vector<float>> probs;     // per image (K, out_h, out_w) when want_probs
  bool graph = false;  // replayed (or captured) as a CUDA graph
};

class DeviceSegmenter {
 public:
  virtual ~DeviceSegmenter() = default;
  // As VitModel::forward (dense or superpatch rects from the host; early exits when in.prune is on).
  // in.capture keeps only "final_norm" on the GPU (the per-block copies are a CPU feature).
  virtual EncoderOutput forward(const EncoderInput& in) = 0;
  // The whole untiled call on the device, from the uint8 images to the labels.
  virtual DeviceSegmentResult segment(const DeviceSegmentRequest& r) = 0;
};

// ---- one call -----------------------------------------------------------------------------------
// One image and the caller's arrays its results are written to (they outlive the call).
struct SegmentImage {
  const uint8_t* rgb = nullptr;  // (h, w, channels) resized image
  int w = 0, h = 0, channels = 3, out_w = 0, out_h = 0;
  uint8_t* labels8 = nullptr;    // (out_h, out_w): labels8 when K <= 256, else labels16
  uint16_t* labels16 = nullptr;
  float* probs = nullptr;        // (K, out_h, out_w) or null
  float* logits = nullptr;       // (K, gh, gw) or null
  int32_t* index = nullptr;      // (gh, gw) each: the token map
  uint8_t* size = nullptr;
  uint8_t* exit_layer = nullptr;
};

struct SegmentRequest {
  std::vector<SegmentImage> images;
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};  // 0..1 units (lib/: the model's pixel_mean / pixel_std)
  bool want_probs = false, want_logits = false;
  MergeSettings merge;
  PruneSettings prune;
  TileSettings tile;
};

// Per image: what comes back besides the caller's arrays.
struct SegmentImageResult {
  std::vector<int64_t> tokens_per_size;  // per merge level, then 1 x 1
  int64_t dense = 0, input = 0;          // tokens, summed over tiles
  int tiles = 0;
};

struct SegmentResult {
  std::vector<SegmentImageResult> images;
  ForwardStats stats;        // of the whole call: every forward's, summed (stage times by name)
  double gflops_policy = 0;  // of stats.gflops, what the learned merge policy spent
};

// Runs one call: on `gpu` when given and the call is untiled, otherwise on `cpu` (the CPU backend of
// the model's precision) with each tile's encoder forward on `gpu` when given. A forward whose values
// leave float32's range is a kBadModel error (the inputs are uint8 and mean / std finite: lib/ checks).
SegmentResult segment(VitModel& model, Backend& cpu, DeviceSegmenter* gpu, const SegmentRequest& r);

}  // namespace step
