// device_model.h: a ViT segmentation model resident on the GPU, as plain C++ (no CUDA header) so that
// the addon can hold one. It is the CUDA twin of VitModel::forward: the same EncoderInput in, the same
// EncoderOutput out (host tensors), computed with the kernels of cuda_ops.h on one CUDA stream.
//
// Memory:
//   - weights: uploaded once at creation; the GEMM weights as bfloat16 (N, K), every other tensor
//     (biases, LayerNorm, layer scale, class/register tokens, position embeddings) as float32.
//   - position embeddings of each patch grid met so far: resampled on the host (VitModel::pos_grid),
//     uploaded once, cached for the life of the model.
//   - workspace: one device allocation carved into every activation buffer of a forward, sized by
//     the largest input seen so far (grow-only; it is the model's memory pool). A larger input frees it
//     and allocates the new size first, so peak use is the larger size only.
//   All of it is freed by the destructor (dispose). Out of memory anywhere is step::Error(kOutOfMemory)
//   naming what was being allocated, how much, and what the GPU has free; the model stays usable.
//
// Row counts: the token list shrinks on the device at every early exit (token_halt + token_compact
// rewrite the offsets there); every later kernel reads the real count from device memory, and the host
// passes only the count at the input as the upper bound. The forward synchronises once, at the end,
// to copy the results back.
//
// segment() is the whole of model.segment() on the GPU but for decoding and resizing: the uint8 images
// go up, and labels (and probabilities, patch logits when asked) come down; normalising, window scoring
// and superpatch selection (the similarity scorer or the learned policy's trunk and heads),
// the encoder with its early exits, unsharing and the bilinear upsampling with argmax all run on the
// device with every token count kept there. Every kernel is sized by the dense bound, so the work of
// one call depends only on the sizes and settings, never on the image: it is captured once into a
// CUDA graph per such key and replayed after (STEP_SEG_CUDA_GRAPHS=0 turns graphs off).
//
// Precision: GEMM and attention operands in bfloat16, accumulation, softmax, LayerNorm statistics and
// the residual stream in float32 (as PyTorch's bf16 autocast does).
#pragma once
#include <cstddef>
#include <memory>

#include <string>
#include <vector>

#include "../core/backend.h"
#include "../core/merge.h"
#include "../core/model.h"

namespace step::cuda {

struct DeviceMemoryUse {
  size_t weights = 0;    // bytes of uploaded weights and cached position embeddings
  size_t workspace = 0;  // bytes of the activation workspace (the pool)
};

class DeviceModel {
 public:
  virtual ~DeviceModel() = default;
  // Uploads `model`'s weights to GPU 0. kDeviceUnavailable when the probe found no usable GPU (its
  // reason in the message), kOutOfMemory when the weights do not fit. `model` must outlive this object
  // (its host position embeddings are resampled on demand with `host` backend's pos_resample).
  static std::unique_ptr<DeviceModel> create(VitModel& model, Backend& host);

  // As VitModel::forward (dense or superpatch rects from the host; early exits when in.prune is on).
  // in.capture keeps only "final_norm" on the GPU (the per-block copies are a CPU feature).
  virtual EncoderOutput forward(const EncoderInput& in) = 0;

  struct Image {
    const uint8_t* rgb = nullptr;  // (h, w, channels) uint8, the resized image
    int h = 0, w = 0, channels = 3;
    int out_h = 0, out_w = 0;      // label map size
  };
  struct SegmentRequest {
    std::vector<Image> images;
    float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};  // 0..255 pixel units
    MergeSettings merge;                 // planned on the device, with either scorer
    PruneSettings prune;
    bool want_probs = false, want_logits = false;
  };
  struct SegmentResult {
    EncoderOutput enc;   // offsets, rect_exit, stats; grid_logits when want_logits
    MergePlan plan;      // rects, token_of_patch, tokens_per_size as selected on the device
    std::vector<std::vector<int32_t>> labels;  // per image (out_h, out_w)
    std::vector<std::vector<float>> probs;     // per image (K, out_h, out_w) when want_probs
    bool graph = false;  // replayed (or captured) as a CUDA graph
  };
  virtual SegmentResult segment(const SegmentRequest& r) = 0;
  virtual DeviceMemoryUse memory() const = 0;
};

// Free and total bytes of GPU 0 (cudaMemGetInfo); {0, 0} when there is no usable GPU.
struct DeviceMemoryInfo {
  size_t free = 0, total = 0;
};
DeviceMemoryInfo device_memory_info();

}  // namespace step::cuda
