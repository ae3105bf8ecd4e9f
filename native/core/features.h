// features.h: one forwardFeatures() call, backend-neutral: a ViT's final-norm tokens (and, with
// capture, its intermediates) for the dense patch grid, or a bare EfficientNet-Lite0 trunk's five
// stage maps, from normalised pixels. The ViT runs on the model's device (a DeviceSegmenter when it
// is on the GPU); the trunk runs on the CPU.
#pragma once
#include <vector>

#include "backend.h"
#include "effnet.h"
#include "model.h"
#include "segment.h"
#include "tensor.h"

namespace step {

struct FeaturesRequest {
  const float* pixels = nullptr;  // (images, 3, height, width) normalised (finite: lib/ checks)
  int images = 0, height = 0, width = 0;
  bool capture = false;           // ViTs: keep patch_embed, tokens_0, block_N, final_norm copies
};

struct FeaturesResult {
  EncoderOutput enc;          // ViTs: tokens, captured; both: stats
  std::vector<Tensor> stages; // trunks: the stage maps, (images, C, h, w) each, strides 2 to 32
};

// Values that leave float32's range are a kBadInput error when the pixels are far outside the
// normalised range, a kBadModel error otherwise.
FeaturesResult forward_features(VitModel& model, Backend& cpu, DeviceSegmenter* gpu, const FeaturesRequest& r);
FeaturesResult forward_features(const EffNetTrunk& trunk, Backend& cpu, const FeaturesRequest& r);

}  // namespace step
