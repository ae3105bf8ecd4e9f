// token_merge.cu: superpatch merging on the GPU; the CUDA side of native/cpu/token_merge.cpp
// (window_score, superpatch_select, patch_gather, token_pos_embed, unshare).
//   window_score_patch_kernel   one block per patch: integer sums and sums of squares of its valid
//                               pixels (exact, so the per-patch mean and texture are computed from the
//                               same numbers in the same double-precision steps as the CPU: identical).
//   window_score_window_kernel  one thread per window, grid.y = level: the CPU's float loops in the
//                               CPU's order; only expf / std::exp may differ (by an ulp or two).
//   superpatch_select_kernel    ONE block per image (grids are a few thousand cells): levels in order,
//                               each level's windows checked and marked in parallel (windows of one
//                               level never overlap, so they are independent given the coverage of the
//                               earlier levels; a barrier between levels), then tokens numbered in
//                               row-major order of their top-left cell by a block-wide scan over the
//                               cells, then every cell finds its token by binary search over the rects
//                               (sorted by top-left cell). Integer outputs are exactly the CPU's.
//   unshare_kernel              one block per token, threads over its S * S * K outputs; blocks past the
//                               real count (tokens_device, when set) exit at once. Copies into the grid
//                               (copy mode) or into the flat workspace (blend mode).
//   unshare_kernel_blend        blend mode, after the copy: the same blocks and threads; each output is
//                               the box mean of ops.h over the flat copy in the CPU's loop order. The
//                               weights times the logits are exact, so fma contraction changes nothing
//                               and the grid is bit-identical to the CPU's.
//   patch_gather_kernel         one block per token rect, threads over its 3 * P * P outputs (channel,
//                               ky, kx); consecutive threads read consecutive pixels. Same sums in the
//                               same order as the CPU.
//   token_pos_embed_kernel      one warp per row of the packed list: items 0 .. B * prefix - 1 are the
//                               prefix rows (image i / prefix), the rest are the rects in order; the
//                               total, offsets[B], is read on the device.
// Layouts as in ops.h. window_score needs a workspace of window_score_workspace_floats() floats.
#include <algorithm>

#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSelectThreads = 1024;

// ---- window_score -------------------------------------------------------------------------------

struct WindowScoreArgs {
  const uint8_t* image;  // (h, w, channels)
  int h, w, channels, patch, gh, gw, num_levels;
  const int32_t* levels;  // (num_levels) window sides
  float color_tau, texture_tau;
  float* mean;           // (gh * gw, 3) workspace
  float* texture;        // (gh * gw) workspace
  float* scores;         // levels concatenated
};

__global__ void __launch_bounds__(kThreads) window_score_patch_kernel(WindowScoreArgs a) {
  const int cell = blockIdx.x, gy = cell / a.gw, gx = cell % a.gw, P = a.patch;
  const int y0 = gy * P, y1 = min(a.h, y0 + P), x0 = gx * P, x1 = min(a.w, x0 + P);
  const int pw = max(0, x1 - x0), n_px = max(0, y1 - y0) * pw;
  // Exact integer sums: at most 255^2 per pixel, so 64 bits never overflow.
  unsigned long long sum[3] = {0, 0, 0}, sq[3] = {0, 0, 0};
  for (int i = threadIdx.x; i < n_px; i += blockDim.x) {
    const uint8_t* px = a.image + (int64_t(y0 + i / pw) * a.w + x0 + i % pw) * a.channels;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const unsigned v = px[c];
      sum[c] += v, sq[c] += v * v;
    }
  }
  __shared__ unsigned long long part[6][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int c = 0; c < 3; ++c)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      sum[c] += __shfl_xor_sync(0xffffffffu, sum[c], o);
      sq[c] += __shfl_xor_sync(0xffffffffu, sq[c], o);
    }
  if (lane == 0)
    for (int c = 0; c < 3; ++c) part[c][warp] = sum[c], part[3 + c][warp] = sq[c];
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int c = 0; c < 3; ++c) {
    sum[c] = 0, sq[c] = 0;
    for (int w = 0; w < kThreads / 32; ++w) sum[c] += part[c][w], sq[c] += part[3 + c][w];
  }
  // As the CPU, in double: the sums are the same integers, so every step below rounds the same way.
  // __ddiv_rn / __dmul_rn / __dsub_rn: no contraction into an fma (the CPU has none).
  const double n = double(max(1, n_px));
  double var = 0;
  for (int c = 0; c < 3; ++c) {
    const double m = __ddiv_rn(double(sum[c]), n);
    a.mean[cell * 3 + c] = float(m);
    var = __dadd_rn(var, fmax(0.0, __dsub_rn(__ddiv_rn(double(sq[c]), n), __dmul_rn(m, m))));
  }
  a.texture[cell] = float(sqrt(__ddiv_rn(var, 3.0)));
}

__global__ void __launch_bounds__(kThreads) window_score_window_kernel(WindowScoreArgs a) {
  const int l = blockIdx.y;
  int64_t first = 0;  // first score of level l
  for (int j = 0; j < l; ++j) first += int64_t(a.gh / a.levels[j]) * (a.gw / a.levels[j]);
  const int S = a.levels[l], wh = a.gh / S, ww = a.gw / S;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= wh * ww) return;
  const int wy = i / ww, wx = i % ww;
  float m[3] = {0, 0, 0}, t = 0;
  for (int dy = 0; dy < S; ++dy)
    for (int dx = 0; dx < S; ++dx) {
      const int64_t cell = int64_t(wy * S + dy) * a.gw + wx * S + dx;
      for (int c = 0; c < 3; ++c) m[c] += a.mean[cell * 3 + c];
      t = fmaxf(t, a.texture[cell]);
    }
  for (int c = 0; c < 3; ++c) m[c] /= float(S * S);
  float d2 = 0;
  for (int dy = 0; dy < S; ++dy)
    for (int dx = 0; dx < S; ++dx) {
      const int64_t cell = int64_t(wy * S + dy) * a.gw + wx * S + dx;
      float e = 0;
      for (int c = 0; c < 3; ++c) {
        const float d = __fsub_rn(a.mean[cell * 3 + c], m[c]);
        e = __fadd_rn(e, __fmul_rn(d, d));
      }
      d2 = fmaxf(d2, e / 3);
    }
  const float d = sqrtf(d2), dc = d / a.color_tau, tt = t / a.texture_tau;
  a.scores[first + i] = expf(-__fmul_rn(dc, dc)) * expf(-__fmul_rn(tt, tt));
}

// ---- superpatch_select --------------------------------------------------------------------------

struct SelectArgs {
  int image, gh, gw, num_levels;
  const int32_t* levels;      // (num_levels) window sides
  const float* thresholds;    // (num_levels)
  const float* scores;        // levels concatenated
  TokenRect* rects;           // (gh * gw)
  int32_t* count;             // (1)
  int32_t* owner;             // (gh, gw): the output token_of_patch, used first for the owner cells
};

__global__ void __launch_bounds__(kSelectThreads) superpatch_select_kernel(SelectArgs a) {
  __shared__ int scratch[33];
  const int cells = a.gh * a.gw, gw = a.gw;
  int32_t* owner = a.owner;  // top-left cell of the accepted window covering each cell, or -1
  for (int c = threadIdx.x; c < cells; c += blockDim.x) owner[c] = -1;
  __syncthreads();
  const float* scores = a.scores;
  for (int l = 0; l < a.num_levels; ++l) {
    const int S = a.levels[l], wh = a.gh / S, ww = a.gw / S;
    const float threshold = a.thresholds[l];
    // Windows of one level are disjoint: each thread reads and writes only its own window's cells.
    for (int i = threadIdx.x; i < wh * ww; i += blockDim.x) {
      if (!(scores[i] >= threshold)) continue;
      const int wy = i / ww, wx = i % ww, top_left = (wy * S) * gw + wx * S;
      bool free = true;
      for (int dy = 0; dy < S && free; ++dy)
        for (int dx = 0; dx < S && free; ++dx) free = owner[top_left + dy * gw + dx] < 0;
      if (!free) continue;
      for (int dy = 0; dy < S; ++dy)
        for (int dx = 0; dx < S; ++dx) owner[top_left + dy * gw + dx] = top_left;
    }
    scores += int64_t(wh) * ww;
    __syncthreads();
  }
  // Tokens: one per top-left cell (a free cell, or the top-left of an accepted window), numbered in
  // row-major cell order. owner is only read in this pass.
  int base = 0;
  for (int c0 = 0; c0 < cells; c0 += blockDim.x) {
    const int cell = c0 + threadIdx.x;
    const int o = cell < cells ? owner[cell] : 0;
    const bool is_token = cell < cells && (o < 0 || o == cell);
    int total = 0;
    const int n = base + block_exclusive_scan(is_token ? 1 : 0, scratch, &total);
    if (is_token) {
      const int row = cell / gw, col = cell % gw;
      int size = 1;  // the window's side: its cells in this row all have owner == cell
      if (o == cell)
        while (col + size < gw && owner[cell + size] == cell) ++size;
      a.rects[n] = TokenRect{a.image, row, col, size};
    }
    base += total;
  }
  if (threadIdx.x == 0) *a.count = base;
  __syncthreads();  // rects complete
  // Each cell's token: binary search of its top-left cell among the rects (sorted by top-left cell).
  // A thread reads and then writes only its own cell of owner / token_of_patch.
  for (int cell = threadIdx.x; cell < cells; cell += blockDim.x) {
    const int o = owner[cell], top_left = o < 0 ? cell : o;
    int lo = 0, hi = base - 1;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      const TokenRect r = a.rects[mid];
      if (r.row * gw + r.col < top_left) lo = mid + 1;
      else hi = mid;
    }
    owner[cell] = lo;
  }
}

// ---- unshare ------------------------------------------------------------------------------------

struct UnshareArgs {
  int K, tokens;
  const TokenRect* rects;      // (tokens)
  const float* logits;         // (tokens, K)
  const int32_t* grid_offset;  // (B)
  const int32_t* grid_w;       // (B)
  float* grid;                 // (cells, K)
  const int32_t* tokens_device;  // (1) or null
  bool blend;
  const int32_t* grid_h;       // (B) (blend)
  float* flat;                 // (cells, K) the copy (blend)
};

__global__ void __launch_bounds__(kThreads) unshare_kernel(UnshareArgs a) {
  const int t = blockIdx.x;
  if (a.tokens_device && t >= *a.tokens_device) return;
  const TokenRect r = a.rects[t];
  const int K = a.K, S = r.size, n = S * S * K, gw = a.grid_w[r.image];
  const int64_t first = a.grid_offset[r.image];
  const float* src = a.logits + int64_t(t) * K;  // (K)
  float* copy = a.blend ? a.flat : a.grid;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int k = i % K, cell = i / K, dy = cell / S, dx = cell % S;
    copy[(first + int64_t(r.row + dy) * gw + r.col + dx) * K + k] = src[k];
  }
}

__device__ float blend_weight(int S, int o) { return fminf(1.f, 0.5f * float(S + 1) - float(abs(o))); }

__global__ void __launch_bounds__(kThreads) unshare_kernel_blend(UnshareArgs a) {
  const int t = blockIdx.x;
  if (a.tokens_device && t >= *a.tokens_device) return;
  const TokenRect r = a.rects[t];
  const int K = a.K, S = r.size, half = S / 2, n = S * S * K, gw = a.grid_w[r.image], gh = a.grid_h[r.image];
  const float* img = a.flat + int64_t(a.grid_offset[r.image]) * K;  // (gh, gw, K)
  float* out = a.grid + int64_t(a.grid_offset[r.image]) * K;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int k = i % K, c = i / K, dy = c / S, dx = c % S;
    const int64_t cell = int64_t(r.row + dy) * gw + r.col + dx;
    if (S == 1) {
      out[cell * K + k] = img[cell * K + k];
      continue;
    }
    float acc = 0.f;
    for (int oy = -half; oy <= half; ++oy) {
      const int y = min(max(r.row + dy + oy, 0), gh - 1);
      for (int ox = -half; ox <= half; ++ox) {
        const int x = min(max(r.col + dx + ox, 0), gw - 1);
        acc += blend_weight(S, oy) * blend_weight(S, ox) * img[(int64_t(y) * gw + x) * K + k];
      }
    }
    out[cell * K + k] = acc / float(S * S);
  }
}

// ---- patch_gather -------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    patch_gather_kernel(PatchGatherParams p,                 // pixels (B, 3, H, W), rects (tokens)
                        const int32_t* __restrict__ tokens_device,
                        __nv_bfloat16* __restrict__ out_bf16) {  // (tokens, 3 * P * P), as p.out
  const int tokens = tokens_device ? min(*tokens_device, p.tokens) : p.tokens;
  const int t = blockIdx.x;
  if (t >= tokens) return;
  const TokenRect r = p.rects[t];
  const int P = p.patch, S = r.size, row = 3 * P * P;
  const int64_t plane = int64_t(p.height) * p.width;
  const float inv_area = 1.f / float(S * S);
  const float* img = p.pixels + int64_t(r.image) * 3 * plane;  // (3, H, W)
  const int y0 = r.row * P, x0 = r.col * P;
  for (int e = threadIdx.x; e < row; e += blockDim.x) {
    const int c = e / (P * P), ky = (e / P) % P, kx = e % P;
    float sum = 0.f;
    for (int dy = 0; dy < S; ++dy) {
      const float* src = img + c * plane + int64_t(y0 + ky * S + dy) * p.width + x0 + kx * S;
      for (int dx = 0; dx < S; ++dx) sum += src[dx];
    }
    const float v = S == 1 ? sum : __fmul_rn(sum, inv_area);
    if (p.out) p.out[int64_t(t) * row + e] = v;
    if (out_bf16) out_bf16[int64_t(t) * row + e] = __float2bfloat16_rn(v);
  }
}

// ---- token_pos_embed ----------------------------------------------------------------------------

constexpr int kRowsPerBlock = kThreads / 32;

__global__ void __launch_bounds__(kThreads) token_pos_embed_kernel(TokenPosEmbedParams p, int rows_bound) {
  const int total = min(p.offsets[p.batch], rows_bound);
  const int item = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (item >= total) return;  // warp-uniform; no block barrier in this kernel
  const int C = p.C, prefix_rows = p.batch * p.prefix;
  if (item < prefix_rows) {
    const int b = item / p.prefix, i = item % p.prefix;
    float* out = p.out + int64_t(p.offsets[b] + i) * C;
    const float* tok = p.prefix_tokens + int64_t(i) * C;
    const float* pos = p.pos_prefix ? p.pos_prefix + int64_t(i) * C : nullptr;
    for (int c = lane; c < C; c += 32) out[c] = tok[c] + (pos ? pos[c] : 0.f);
    return;
  }
  const int j = item - prefix_rows;  // rect index
  const TokenRect r = p.rects[j];
  float* out = p.out + (int64_t(j) + int64_t(r.image + 1) * p.prefix) * C;
  const float* emb = p.embedded + int64_t(j) * C;
  const float* grid = p.pos_grid + int64_t(p.grid_offset[r.image]) * C;  // (gh_b, gw_b, C)
  const int gw = p.grid_w[r.image], S = r.size;
  if (S == 1) {
    const float* pos = grid + (int64_t(r.row) * gw + r.col) * C;
    for (int c = lane; c < C; c += 32) out[c] = emb[c] + pos[c];
    return;
  }
  const float inv_area = 1.f / float(S * S);
  for (int c = lane; c < C; c += 32) {
    float sum = 0.f;
    for (int dy = 0; dy < S; ++dy)
      for (int dx = 0; dx < S; ++dx) sum += grid[(int64_t(r.row + dy) * gw + r.col + dx) * C + c];
    out[c] = __fadd_rn(emb[c], __fmul_rn(sum, inv_area));
  }
}

// ---- launchers ----------------------------------------------------------------------------------

void window_score_launch(const WindowScoreArgs& a, cudaStream_t stream) {
  NvtxRange range("window_score");
  launch<window_score_patch_kernel>(a.gh * a.gw, kThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
  // Level l has (gh / S) * (gw / S) <= gh * gw windows (S >= 1); blocks past a level's count exit.
  const dim3 grid(ceil_div(a.gh * a.gw, kThreads), a.num_levels);
  launch<window_score_window_kernel>(grid, kThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

void superpatch_select_launch(const SelectArgs& a, cudaStream_t stream) {
  NvtxRange range("superpatch_select");
  launch<superpatch_select_kernel>(1, kSelectThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

void unshare_launch(const UnshareArgs& a, cudaStream_t stream) {
  NvtxRange range("unshare");
  launch<unshare_kernel>(a.tokens, 128, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
  if (!a.blend) return;
  launch<unshare_kernel_blend>(a.tokens, 128, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

void patch_gather_launch(const PatchGatherParams& p, const int32_t* tokens_device, __nv_bfloat16* out_bf16,
                         cudaStream_t stream) {
  NvtxRange range("patch_gather");
  launch<patch_gather_kernel>(p.tokens, kThreads, 0, stream, p, tokens_device, out_bf16);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_pos_embed_launch(const TokenPosEmbedParams& p, int rows_bound, cudaStream_t stream) {
  NvtxRange range("token_pos_embed");
  launch<token_pos_embed_kernel>(ceil_div(rows_bound, kRowsPerBlock), kThreads, 0, stream, p, rows_bound);
  STEP_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- public entries -----------------------------------------------------------------------------

int64_t window_score_workspace_floats(int gh, int gw) { return 4 * int64_t(gh) * gw; }

void window_score(const WindowScoreParams& p, const WindowScoreDeviceExtras& x, void* stream) {
  STEP_CHECK(p.h > 0 && p.w > 0 && p.patch > 0 && p.gh > 0 && p.gw > 0 && p.num_levels >= 0,
             "cuda::window_score: bad sizes");
  STEP_CHECK(p.channels >= 3, "cuda::window_score: needs at least 3 channels");
  STEP_CHECK(p.color_tau > 0 && p.texture_tau > 0, "cuda::window_score: color_tau and texture_tau must be set (> 0)");
  STEP_CHECK(int64_t(p.gh) * p.patch >= p.h && int64_t(p.gw) * p.patch >= p.w,
             "cuda::window_score: the patch grid does not cover the image");
  STEP_CHECK(p.num_levels <= 65535, "cuda::window_score: too many levels");
  if (p.num_levels == 0) return;
  STEP_CHECK(p.image && p.levels && p.scores && x.workspace, "cuda::window_score: missing image, levels, scores or workspace");
  const int64_t cells = int64_t(p.gh) * p.gw;
  STEP_CHECK(cells < (int64_t(1) << 31) / 4, "cuda::window_score: grid too large");
  const WindowScoreArgs a{p.image, p.h, p.w, p.channels, p.patch, p.gh, p.gw, p.num_levels, p.levels,
                          p.color_tau, p.texture_tau, x.workspace, x.workspace + 3 * cells, p.scores};
  window_score_launch(a, as_stream(stream));
}

void superpatch_select(const SuperpatchSelectParams& p, void* stream) {
  STEP_CHECK(p.gh > 0 && p.gw > 0 && p.num_levels >= 0, "cuda::superpatch_select: bad sizes");
  STEP_CHECK(int64_t(p.gh) * p.gw < (int64_t(1) << 30), "cuda::superpatch_select: grid too large");
  STEP_CHECK(p.rects && p.count && p.token_of_patch && (p.num_levels == 0 || (p.levels && p.thresholds && p.scores)),
             "cuda::superpatch_select: missing buffer");
  const SelectArgs a{p.image, p.gh, p.gw, p.num_levels, p.levels, p.thresholds, p.scores, p.rects, p.count, p.token_of_patch};
  superpatch_select_launch(a, as_stream(stream));
}

void unshare(const UnshareParams& p, const UnshareDeviceExtras& x, void* stream) {
  STEP_CHECK(p.K > 0 && p.tokens >= 0, "cuda::unshare: bad K or tokens");
  STEP_CHECK(p.mode == UnshareMode::kCopy || p.mode == UnshareMode::kBlend, "cuda::unshare: mode not set");
  if (p.tokens == 0) return;
  STEP_CHECK(p.rects && p.logits && p.grid_offset && p.grid_w && p.grid, "cuda::unshare: missing buffer");
  const bool blend = p.mode == UnshareMode::kBlend;
  STEP_CHECK(!blend || (p.grid_h && p.flat && p.flat != p.grid), "cuda::unshare: blend needs grid_h and a flat workspace");
  const UnshareArgs a{p.K, p.tokens, p.rects, p.logits, p.grid_offset, p.grid_w, p.grid, x.tokens_device, blend, p.grid_h, p.flat};
  unshare_launch(a, as_stream(stream));
}

void patch_gather(const PatchGatherParams& p, const PatchGatherDeviceExtras& x, void* stream) {
  STEP_CHECK(p.tokens >= 0 && p.patch > 0, "cuda::patch_gather: bad tokens or patch");
  if (p.tokens == 0) return;
  STEP_CHECK(p.pixels && p.rects, "cuda::patch_gather: null buffer");
  STEP_CHECK(p.out || x.out_bf16, "cuda::patch_gather: no output (out or out_bf16)");
  patch_gather_launch(p, x.tokens_device, as_bf16(x.out_bf16), as_stream(stream));
}

void token_pos_embed(const TokenPosEmbedParams& p, const TokenPosEmbedDeviceExtras& x, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.C > 0 && p.prefix >= 0, "cuda::token_pos_embed: bad batch, C or prefix");
  STEP_CHECK(x.rows_bound >= 0, "cuda::token_pos_embed: negative rows_bound");
  if (p.batch == 0 || x.rows_bound == 0) return;
  STEP_CHECK(p.offsets && p.out && p.grid_offset && p.grid_w, "cuda::token_pos_embed: null buffer");
  STEP_CHECK(p.prefix == 0 || p.prefix_tokens, "cuda::token_pos_embed: missing prefix_tokens");
  STEP_CHECK(x.rows_bound <= p.batch * p.prefix || (p.rects && p.embedded && p.pos_grid),
             "cuda::token_pos_embed: missing rects, embedded or pos_grid");
  token_pos_embed_launch(p, x.rows_bound, as_stream(stream));
}

}  // namespace step::cuda
