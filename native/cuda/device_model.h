// device_model.h: a ViT segmentation model resident on the GPU, as plain C++ (no CUDA header) so that
// the addon can hold one. It is the CUDA twin of VitModel::forward: the same EncoderInput in, the same
// EncoderOutput out (host tensors), computed with the kernels of cuda_ops.h on one CUDA stream.
//
// Memory:
//   - weights: uploaded once at creation; the GEMM weights as bfloat16 (N, K), every other tensor
//     (biases, LayerNorm, layer scale, class/register tokens, position embeddings) as float32.
//   - position embeddings of each patch grid met so far: resampled on the host (VitModel::pos_grid),
//     uploaded once and cached, least recently used first out past the host cache's byte limit
//     (STEP_SEG_POS_CACHE_MB; the grids of the call in flight are kept).
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
#include "../core/segment.h"

namespace step::cuda {

// The GPU engine of core's segment pipeline (core/segment.h: DeviceSegmenter's forward and segment).
class DeviceModel : public DeviceSegmenter {
 public:
  // Uploads `model`'s weights to GPU 0. kDeviceUnavailable when the probe found no usable GPU (its
  // reason in the message), kOutOfMemory when the weights do not fit. `model` must outlive this object
  // (its host position embeddings are resampled on demand with `host` backend's pos_resample).
  static std::unique_ptr<DeviceModel> create(VitModel& model, Backend& host);

  // core's request and result under the names device_model.cu uses
  using Image = DeviceSegmentImage;
  using SegmentRequest = DeviceSegmentRequest;
  using SegmentResult = DeviceSegmentResult;
};

// Free and total bytes of GPU 0 (cudaMemGetInfo); {0, 0} when there is no usable GPU.
struct DeviceMemoryInfo {
  size_t free = 0, total = 0;
};
DeviceMemoryInfo device_memory_info();

}  // namespace step::cuda
