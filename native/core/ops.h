// ops.h: the parameter struct of every op family, the one interface between the model graph and the
// backends. Each struct is the whole interface of its op: raw pointers plus sizes, with the shape and
// dtype of every buffer in a comment. Backends implement them in native/cpu/<op>.cpp and
// native/cuda/<op>.cu under the same stem.
//
// Dimension glossary (used in every shape comment of native/):
//   B   images in a batch            T   tokens of one image (prefix + patch tokens)
//   A   active tokens of the packed list, all images concatenated (A = sum of T over the batch)
//   C   channels (embedding width)   H   attention heads        D   head dimension (C = H * D)
//   K   classes                      P   patch size in pixels   S   superpatch side in patches
//   gh, gw  patch grid of the padded input (rows, columns)
//   GEMM is C[M,N] = A[M,K] * B[K,N]; strides (ld*) are in elements.
// Packed lists: image b owns rows offsets[b] .. offsets[b+1]-1, offsets has B + 1 entries, offsets[0] = 0.
#pragma once
#include <cstdint>
#include <limits>

namespace step {

// ---- gemm ---------------------------------------------------------------------------------------
// The arithmetic of the matrix products (gemm, and attention's two products): float32, or bfloat16
// operands (each rounded to nearest even) with float32 accumulation, the CUDA backend's numerics.
// Everything else (epilogues, softmax, norms) stays float32 either way.
enum class Precision { kFp32, kBf16 };
// c = epilogue(a * w^T + bias). w is stored as PyTorch's Linear weight, [N, K] row-major, which is
// B[K,N] read column-major: the packing step reads it in that order.
enum class Epilogue {
  kNone,      // c = acc + bias
  kGelu,      // c = gelu_erf(acc + bias)                     (timm's nn.GELU, exact erf form)
  kResidual,  // c = residual + scale * (acc + bias)           (scale = 1 unless col_scale is set)
  kRelu6,     // c = min(max(acc + bias, 0), 6)                (EfficientNet-Lite's activation)
  kSigmoid,   // c = 1 / (1 + exp(-(acc + bias)))              (merge-policy heads)
};
struct GemmParams {
  int M = 0, N = 0, K = 0;
  const float* a = nullptr;         // (M, K) row-major, row stride lda
  int lda = 0;
  const float* w = nullptr;         // (N, K) row-major, row stride K
  const void* w_packed = nullptr;   // backend-specific pre-packed form of w (Backend::pack_weights), or null
  const float* bias = nullptr;      // (N) or null
  Epilogue epilogue = Epilogue::kNone;
  const float* residual = nullptr;  // (M, N) row stride ldc; may alias c (in-place residual add)
  const float* col_scale = nullptr; // (N) per-column scale of the residual branch (layer scale) or null
  float* c = nullptr;               // (M, N) row-major, row stride ldc
  int ldc = 0;
};

// ---- conv ---------------------------------------------------------------------------------------
// 2-D convolution over NHWC maps with a k x k kernel, stride s and symmetric zero padding `pad` on
// every side (PyTorch Conv2d(padding=pad)), bias and activation fused. groups is 1 (dense, used for
// the stem) or in_c == out_c (depthwise). 1 x 1 convolutions are not this op: they are a gemm over
// the (B * H * W, C) rows of an NHWC map.
//   out_h = (in_h + 2 * pad - kernel) / stride + 1, likewise out_w.
enum class Activation { kNone, kRelu6 };
struct ConvParams {
  int batch = 0;
  int in_h = 0, in_w = 0, in_c = 0;
  int out_h = 0, out_w = 0, out_c = 0;
  int kernel = 3, stride = 1, pad = 1, groups = 1;
  const float* x = nullptr;     // (B, in_h, in_w, in_c)
  const float* w = nullptr;     // (out_c, in_c / groups, kernel, kernel): PyTorch's Conv2d weight layout
  const float* bias = nullptr;  // (out_c) or null
  Activation act = Activation::kNone;
  float* y = nullptr;           // (B, out_h, out_w, out_c)
};

// ---- avg_pool -----------------------------------------------------------------------------------
// Average over aligned factor x factor blocks of an NHWC map: y[i, j] = mean of x[i*f .. i*f+f-1,
// j*f .. j*f+f-1]; only whole blocks (out_h * f <= in_h, out_w * f <= in_w).
struct AvgPoolParams {
  int in_h = 0, in_w = 0, C = 0, factor = 1, out_h = 0, out_w = 0;
  const float* x = nullptr;  // (in_h, in_w, C)
  float* y = nullptr;        // (out_h, out_w, C)
};

// ---- layernorm ----------------------------------------------------------------------------------
// y[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta, over C.
struct LayerNormParams {
  int rows = 0, C = 0;
  float eps = 0.f;                      // > 0; no default here: VitConfig::norm_eps
  const float* x = nullptr;             // (rows or more, C) row-major
  const float* gamma = nullptr;         // (C)
  const float* beta = nullptr;          // (C)
  float* y = nullptr;                   // (rows, C); may alias x
};

// ---- attention ----------------------------------------------------------------------------------
// Multi-head self-attention of every image of a packed list over its own tokens only:
// out[i, h] = softmax_j(scale * q[i,h] . k[j,h]) v[j,h], i and j rows of the same image.
struct AttentionParams {
  int batch = 0;                   // B
  const int32_t* offsets = nullptr;// (B + 1) int32 row offsets of each image in the packed list
  int heads = 0, head_dim = 0;     // H, D
  float scale = 1.f;               // usually 1 / sqrt(D)
  const float* qkv = nullptr;      // (A, 3, H, D): timm's qkv Linear output, q then k then v
  float* out = nullptr;            // (A, H, D)
};

// ---- patch_gather -------------------------------------------------------------------------------
// The im2col of the patch embedding, generalised to superpatches: token t covers S x S patches with
// its top-left patch at (row, col) of image `image`; its row of `out` is its region area-downsampled to
// P x P pixels (each output pixel the mean of its S x S block), laid out as the conv weight
// (channel, ky, kx). S = 1 is the ordinary patch.
struct TokenRect {
  int32_t image, row, col, size;   // image index, top-left patch row and column, side S in patches
};
struct PatchGatherParams {
  int images = 0, height = 0, width = 0;  // B, padded H and W in pixels (multiples of P)
  int patch = 0;                          // P
  const float* pixels = nullptr;          // (B, 3, H, W) normalised float32
  int tokens = 0;                         // number of rects
  const TokenRect* rects = nullptr;       // (tokens)
  float* out = nullptr;                   // (tokens, 3 * P * P)
};

// ---- window_score -------------------------------------------------------------------------------
// The training-free merge scorer: how uniform each aligned window of S x S patches is, from the pixels,
// in one pass over the image. Definitions (pixel values in 0..255, padding pixels excluded):
//   per patch p:   m_p = mean colour (3 channels), s_p = sqrt(mean over channels of the variance of
//                  the channel inside p): the patch's own texture / edge energy
//   per window W:  m_W = mean of m_p over W
//                  d_W = max over p in W of ||m_p - m_W|| / sqrt(3)     (colour spread, RMS over RGB)
//                  t_W = max over p in W of s_p                        (the busiest patch)
//   score(W) = exp(-(d_W / color_tau)^2) * exp(-(t_W / texture_tau)^2), in (0, 1]
// so a window scores high only when all its patches share one colour and none holds an edge or a strong
// texture. Windows are on the aligned grid of each level; a window that would reach past the patch
// grid scores 0 (it is never merged).
struct WindowScoreParams {
  const uint8_t* image = nullptr;  // (h, w, channels) uint8, the resized image (no padding)
  int h = 0, w = 0, channels = 3;
  int patch = 0;                   // P
  int gh = 0, gw = 0;              // patch grid over the padded image: ceil(h / P) x ceil(w / P)
  int num_levels = 0;
  const int32_t* levels = nullptr;  // (num_levels) window side S of each level, in patches, largest first
  float color_tau = 0.f, texture_tau = 0.f;  // > 0; no default here: lib/config.ts (kDefaultMerge)
  float* scores = nullptr;          // per level (gh / S, gw / S) row-major, levels concatenated
};

// ---- superpatch_select --------------------------------------------------------------------------
// Chooses the superpatches of one image from window scores (any scorer): levels in the order given
// (largest first), a window accepted when its score >= the level's threshold and none of its patches
// is covered yet; every patch left over becomes a 1 x 1 token. Rects come out in row-major order of
// their top-left patch, so with nothing merged the list is exactly the dense patch order.
struct SuperpatchSelectParams {
  int image = 0;                       // image index written into the rects
  int gh = 0, gw = 0;
  int num_levels = 0;
  const int32_t* levels = nullptr;     // (num_levels) window sides, in patches, largest first
  const float* thresholds = nullptr;   // (num_levels)
  const float* scores = nullptr;       // as WindowScoreParams::scores
  TokenRect* rects = nullptr;          // (gh * gw) capacity; the first *count are written
  int32_t* count = nullptr;            // (1) number of tokens of this image
  int32_t* token_of_patch = nullptr;   // (gh, gw) index in rects of the token covering each patch
};

// ---- token_pos_embed ----------------------------------------------------------------------------
// Builds the packed token list: for image b, rows offsets[b] .. offsets[b] + prefix - 1 are the prefix
// tokens (class and register tokens, plus their position embeddings when pos_prefix is set), then one
// row per token rect: its patch embedding plus the mean position embedding of the S x S patches it
// covers. Every image has its own patch grid (images of a batch may differ in size): its position
// embeddings start at cell grid_offset[b] of pos_grid, rows of grid_w[b] cells.
struct TokenPosEmbedParams {
  int batch = 0, C = 0;
  int prefix = 0;                         // prefix tokens per image
  const float* prefix_tokens = nullptr;   // (prefix, C)
  const float* pos_prefix = nullptr;      // (prefix, C) or null (timm's no_embed_class)
  const float* pos_grid = nullptr;        // (sum over b of gh_b * gw_b, C)
  const int32_t* grid_offset = nullptr;   // (B) first cell of each image's grid
  const int32_t* grid_w = nullptr;        // (B) grid columns of each image
  const int32_t* offsets = nullptr;       // (B + 1) rows of each image in out
  const TokenRect* rects = nullptr;       // (A - B * prefix) in image order
  const float* embedded = nullptr;        // (A - B * prefix, C) patch embedding of each rect
  float* out = nullptr;                   // (A, C)
};

// ---- unshare ------------------------------------------------------------------------------------
// After the heads: each token's logits go to every patch its rect covers, giving dense patch-grid
// logits per image (grids laid out as in TokenPosEmbedParams). Two modes:
//   kCopy   every cell of a rect gets its token's logits (CTS's unsharing): flat inside a superpatch,
//           so after the bilinear upsample its border is a straight edge of S * P pixels.
//   kBlend  the copy first (into `flat`), then each cell of a rect of side S > 1 gets the mean of the
//           copy over an S x S box centred on the cell (offsets o = -S/2 .. S/2 per axis, weight
//           min(1, S/2 + 1/2 - |o|) / S, the product of the two axes; cells past the grid edge
//           clamped to it). Across the edge between two tokens of side S this goes linearly from one
//           token centre to the other, which is bilinear interpolation between token centres; where a
//           superpatch meets single patches its border cells lean toward them. 1 x 1 rects keep their
//           own logits, so a grid without superpatches is the copy exactly.
// The weights are 1, 1/2 or 1/4 times 1/S^2: each product is exact, so any order of fused or unfused
// multiply-adds over the box in the same order gives the same float.
enum class UnshareMode { kUnset, kCopy, kBlend };
struct UnshareParams {
  int K = 0;
  int tokens = 0;
  const TokenRect* rects = nullptr;      // (tokens)
  const float* logits = nullptr;         // (tokens, K): row t holds the logits of rects[t]
  const int32_t* grid_offset = nullptr;  // (B) first cell of each image's grid
  const int32_t* grid_w = nullptr;       // (B) grid columns of each image
  float* grid = nullptr;                 // (sum over b of gh_b * gw_b, K)
  // No default (lib/config.ts, merge.unshare): unset, the op refuses to run.
  UnshareMode mode = UnshareMode::kUnset;
  const int32_t* grid_h = nullptr;       // (B) grid rows of each image (kBlend)
  float* flat = nullptr;                 // (sum over b of gh_b * gw_b, K) workspace (kBlend); not grid
};

// ---- token_halt ---------------------------------------------------------------------------------
// Early exits (STEP's pruning half, after DToP): a token halts when its confidence, the largest
// softmax probability of its exit-head logits, is >= threshold; but for each class, the top_k most
// confident halting tokens of each image (argmax = that class, ties to the lower row) stay active as
// context. Prefix tokens never halt.
struct TokenHaltParams {
  int batch = 0, K = 0, prefix = 0;
  const int32_t* offsets = nullptr;  // (B + 1) rows of each image in the active list
  const float* logits = nullptr;     // (A, K) exit-head logits of every active row
  // No defaults here (lib/config.ts, the prune config): unset, the op refuses to run.
  float threshold = std::numeric_limits<float>::quiet_NaN();
  int top_k = -1;
  uint8_t* halt = nullptr;           // (A) 1 = halts here, 0 = stays active
  // Agreement with neighbours (cell_label null: off). First every row's argmax is written on every cell
  // of its rect in cell_label (cells of rects halted at earlier exits keep the label they halted with);
  // then a row is a candidate only when, besides its confidence, every cell just outside its rect's four
  // edges (inside the grid) has its label: a token on a class boundary keeps going to the final head.
  const int32_t* rect_of_row = nullptr;  // (A) rect of each row, -1 for prefix rows
  const TokenRect* rects = nullptr;      // (rects of all images)
  const int32_t* grid_offset = nullptr;  // (B) first cell of each image's grid
  const int32_t* grid_h = nullptr;       // (B) grid rows of each image
  const int32_t* grid_w = nullptr;       // (B) grid columns of each image
  int32_t* cell_label = nullptr;         // (sum over b of gh_b * gw_b) in/out, or null
};

// ---- token_compact ------------------------------------------------------------------------------
// Removes halted rows from the packed list, keeping order, and rewrites the per-image offsets:
// new row r of image b is the r-th kept row of b. `src_row` maps new rows to old ones (for gathers
// of other per-row data, e.g. the token's rect).
struct TokenCompactParams {
  int batch = 0, C = 0;
  const int32_t* offsets = nullptr;  // (B + 1) before
  const uint8_t* halt = nullptr;     // (A) rows to drop
  const float* x = nullptr;          // (A, C)
  float* out = nullptr;              // (A', C), A' = rows kept; must not alias x
  int32_t* new_offsets = nullptr;    // (B + 1) after
  int32_t* src_row = nullptr;        // (A') old row of each kept row
};

// ---- token_scatter ------------------------------------------------------------------------------
// Writes rows into a table by index: table[index[r]] = rows[r] where index[r] >= 0 and (when mask is
// set) mask[r] != 0. Used to file each token's logits under its rect, from the exit that halted it
// or from the final head.
struct TokenScatterParams {
  int rows = 0, K = 0;
  const float* src = nullptr;        // (rows, K)
  const int32_t* index = nullptr;    // (rows) destination row, or -1 (prefix tokens)
  const uint8_t* mask = nullptr;     // (rows) or null
  float* table = nullptr;            // (table rows, K)
};

// ---- token bookkeeping (token_compact) -----------------------------------------------------------
// The per-row integers that follow the packed list through the encoder: which rect each row carries
// (rect_of_row, -1 for prefix rows) and after how many blocks each rect left (rect_exit). Rects are in
// image order, offsets[b + 1] - offsets[b] - prefix of them for image b, so row r of image b >= prefix
// carries rect r - (b + 1) * prefix.

// token_rows_init: the bookkeeping at the start of a forward, from the offsets alone: rect_of_row[r] =
// -1 for the prefix rows of each image, else r - (b + 1) * prefix; rect_exit[t] = depth for every rect
// ("went through all blocks").
struct TokenRowsInitParams {
  int batch = 0, prefix = 0;
  int depth = 0;                     // the value every rect_exit starts at: the encoder's blocks
  const int32_t* offsets = nullptr;  // (B + 1); every image has at least prefix rows
  int32_t* rect_of_row = nullptr;    // (A) rect of each row, -1 for prefix rows
  int32_t* rect_exit = nullptr;      // (A - B * prefix) one per rect
};

// token_exit_mark: rect_exit[rect_of_row[r]] = layer for every row r < rows that halts (halt[r] != 0)
// and carries a rect (rect_of_row[r] >= 0); every other element of rect_exit is left as it was.
struct TokenExitMarkParams {
  int rows = 0;                          // A
  int layer = 0;                         // the exit: blocks the halted rects went through
  const uint8_t* halt = nullptr;         // (rows) token_halt's flags
  const int32_t* rect_of_row = nullptr;  // (rows) rect of each row, or -1
  int32_t* rect_exit = nullptr;          // (rects) in/out
};

// token_gather: out[r] = in[src_row[r]] for r < rows: per-row int32 data (the rect of each row) carried
// through a compaction, with token_compact's src_row.
struct TokenGatherParams {
  int rows = 0;                      // A' rows after the compaction
  const int32_t* src_row = nullptr;  // (rows) row of `in` of each row of out
  const int32_t* in = nullptr;       // (rows before) int32
  int32_t* out = nullptr;            // (rows) int32; must not alias in
};

// token_pack: the packed token list from each image's selected rects (superpatch_select's output,
// image b's counts[b] rects at stage + grid_offset[b]): the rects of all images back to back in image
// order, the offsets of the list (image b has prefix + counts[b] rows) and the number of rects.
struct TokenPackParams {
  int batch = 0, prefix = 0;
  const int32_t* counts = nullptr;       // (B) rects of each image
  const int32_t* grid_offset = nullptr;  // (B) first rect of each image in stage
  const TokenRect* stage = nullptr;      // (cells) image b's rects at grid_offset[b] .. + counts[b] - 1
  TokenRect* rects = nullptr;            // (sum of counts) packed, image order
  int32_t* offsets = nullptr;            // (B + 1) rows of each image in the packed list
  int32_t* rect_count = nullptr;         // (1) sum of counts
};

// ---- pos_resample -------------------------------------------------------------------------------
// Bicubic resampling of a grid of position embeddings, as timm's resample_abs_pos_embed does:
// torch interpolate(mode bicubic, align_corners False, antialias True), i.e. PIL's separable filter
// (cubic a = -0.5, support 2 * max(scale, 1), weights renormalised at the borders).
struct PosResampleParams {
  int C = 0;
  int src_h = 0, src_w = 0;
  const float* src = nullptr;  // (src_h, src_w, C)
  int dst_h = 0, dst_w = 0;
  float* dst = nullptr;        // (dst_h, dst_w, C)
};

// ---- image_normalize ----------------------------------------------------------------------------
// uint8 interleaved pixels -> normalised planar float32, padded with zeros (the mean colour after
// normalisation) on the right and bottom up to the padded size.
struct ImageNormalizeParams {
  const uint8_t* src = nullptr;   // (h, w, channels) uint8; channels 3 or 4 (alpha ignored)
  int h = 0, w = 0, channels = 3;
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};  // in 0..255 pixel units
  int out_h = 0, out_w = 0;       // padded size, >= h, w
  bool channels_last = false;     // false: out is (3, out_h, out_w); true: (out_h, out_w, 3)
  float* out = nullptr;
};

// ---- upsample -----------------------------------------------------------------------------------
// Bilinear upsampling of one image's patch-grid logits to the output size, then argmax over classes
// (and optionally a softmax). The grid covers a region of `region_h x region_w` pixels of which the
// first `valid_h x valid_w` are image (the rest is padding); output pixel (x, y) samples the grid at
//   gx = (x + 0.5) * valid_w / (out_w * P) - 0.5,  gy likewise   (align_corners = False, clamped)
struct UpsampleParams {
  int K = 0;
  int gh = 0, gw = 0, patch = 0;
  const float* logits = nullptr;  // (gh, gw, K)
  int valid_h = 0, valid_w = 0;   // pixels of real image inside the grid (resized image size)
  int out_h = 0, out_w = 0;
  int32_t* labels = nullptr;      // (out_h, out_w) argmax class, lowest index on ties, or null
  uint8_t* labels_u8 = nullptr;   // the same labels as uint8 (K <= 256), or null (CPU backend)
  uint16_t* labels_u16 = nullptr; // the same labels as uint16, or null (CPU backend)
  float* probs = nullptr;         // (K, out_h, out_w) softmax probabilities, or null
};

}  // namespace step
