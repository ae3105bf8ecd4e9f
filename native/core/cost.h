// cost.h: the one cost model. GFLOPs as every forward counts them (VitModel::forward on any backend,
// the CUDA encoder, the policy trunk) and as the stats report them: a GEMM of (M, K) by (K, N) costs
// 2 M N K, attention 4 T^2 C per image of T tokens (Q K^T and P V); normalisation, softmax, GELU and
// the bookkeeping ops are not counted.
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
// GEMMs, BatchNorm folded).
double effnet_gflops(int H, int W);

}  // namespace step
