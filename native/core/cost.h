// cost.h: the one cost model. GFLOPs as every forward counts them (VitModel::forward on any backend,
// the CUDA encoder, the policy trunk) and as the stats report them: a GEMM of (M, K) by (K, N) costs
// 2 M N K, attention 4 T^2 C per image of T tokens (Q K^T and P V); normalisation, softmax, GELU and
// the bookkeeping ops are not counted. And bytes: what the CPU engine holds at the peak of a forward
// and what a result holds, the estimates lib/ reserves memory with (layout.h plans a call with them).
// Bytes are doubles, as JS holds them: exact integers below 2^53, and no overflow for absurd shapes
// (lib/memory.ts refuses anything above 2^53).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "model.h"

namespace step {

inline double gemm_gflops(int64_t M, int64_t N, int64_t K) { return 2e-9 * double(M) * N * K; }
// sum_t2: the sum over images of T_b^2, T_b the active tokens of image b
inline double attention_gflops(int64_t sum_t2, int C) { return 4e-9 * double(sum_t2) * C; }

// One encoder block over `rows` active tokens: qkv, attention, proj, fc1, fc2.
double block_gflops(const VitConfig& c, int64_t rows, int64_t sum_t2);

// The dense forward (one token per patch, no exits) over images of these patch grids (gh, gw): the
// patch embedding, every block, the segmentation head: what STEP's savings are measured against.
double dense_gflops(const VitConfig& c, const std::vector<std::pair<int, int>>& grids);

// The merge policy's EfficientNet-Lite0 trunk over one image of H x W pixels (convolutions and 1 x 1
// GEMMs, BatchNorm folded), up to its feature map features - 1 (EffNetConfig::features).
double effnet_gflops(int H, int W, int features = 5);

// ---- bytes ----------------------------------------------------------------------------------------
// The sizes of one encoder forward over a batch (or one tile).
struct ForwardShape {
  int64_t images = 0;          // in the forward
  int64_t cells = 0;           // patch-grid cells of all images
  int64_t padded_pixels = 0;   // images * H * W, H and W the largest padded sides
  int64_t largest_pixels = 0;  // the largest image's padded pixels (the learned policy's CNN runs on one at a time)
  int64_t largest_tokens = 0;  // patch-grid cells of the largest image (attention scratch)
  bool learned_policy = false;
};

// Bytes the CPU engine holds at the peak of one forward (model.cpp, native/cpu): the normalised
// pixels, position embeddings, im2col and patch embedding, the residual stream and each block's
// buffers (norm, qkv, attention, MLP), an exit's logits and compacted copy, the heads' and the patch
// grid's logits (twice: unshare's blend reads a flat copy), halting's cell labels, the attention
// kernel's packed K / V and per-thread score rows (`threads`: the CPU backend's), and the learned
// policy's CNN (about 80 floats per pixel); 16 MiB besides.
double forward_bytes(const VitConfig& c, const ForwardShape& s, int threads);

// Bytes of one image's segment() result arrays: labels (out_pixels, uint8 up to 256 classes, else
// uint16), probabilities (K x out_pixels floats), logits (K x cells floats), the token map (6 bytes a
// cell) and the patch-grid logits the engine blends and upsamples (K x cells floats).
double result_bytes(const VitConfig& c, int64_t out_pixels, int64_t cells, bool probs, bool logits);

// Bytes of a bare EfficientNet-Lite0 trunk's forward over `pixels` input pixels: its largest buffers,
// the 96-channel expansion of stage 1 at stride 2 in and out, and the five stage maps (twice: NHWC and
// NCHW), about 80 floats per input pixel, and the copy in: 83 floats.
double trunk_forward_bytes(int64_t pixels);

}  // namespace step
