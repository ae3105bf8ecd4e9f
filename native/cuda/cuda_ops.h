// cuda_ops.h: the public entries of the CUDA encoder kernels, as plain C++ (no CUDA header), so that
// core/ and addon/ code can call them. Each entry computes exactly what the CPU op of the same name
// computes (native/cpu/), on device pointers, and takes the op parameter struct of ops.h plus a small
// struct of CUDA-only extras:
//   - bfloat16 operands: GEMM inputs are bf16; attention, layernorm and patch_gather can read or write
//     bf16 so that activations feed the next GEMM without a conversion pass. bf16 buffers are
//     `uint16_t` here (the raw bits; the .cu files view them as __nv_bfloat16).
//   - counts on the device: where the packed token list shrinks (early exits) inside a captured CUDA
//     graph, the real row count lives in device memory (`*_device`) and the host passes only an upper
//     bound that sizes the grid; blocks past the real count exit at once.
//   - `kernel`: the variant to run; kAuto asks the op's choose_<op>_kernel(), which dispatch, the
//     tests and the benchmark all use. Forcing a variant that cannot run the shape throws kInternal.
// `stream` is a cudaStream_t (null: the legacy default stream). No entry synchronises or allocates,
// so all of them can be captured into a CUDA graph. Argument errors throw step::Error(kInternal):
// they are bugs of the caller, which owns validation of user input.
#pragma once
#include <cstdint>

#include "../core/ops.h"

namespace step::cuda {

// ---- gemm ---------------------------------------------------------------------------------------
// c = epilogue(a * w^T + bias), every Epilogue of ops.h, float32 accumulation.
//   kSimple:       float32 shared-memory tiles (64 x 64 x 16), any shape, stride and alignment.
//   kMma<BM>x<BN>: bf16 tensor cores (mma.sync m16n8k16), BM x BN x 32 block tiles, cp.async
//                  multi-stage pipeline. Needs K % 16 == 0, N % 8 == 0 and aligned operands (see
//                  choose_gemm_kernel); otherwise choose_gemm_kernel picks kSimple.
enum class GemmKernel { kAuto, kSimple, kMma128x128, kMma128x64, kMma64x64 };

struct GemmDeviceExtras {
  const uint16_t* a_bf16 = nullptr;   // (M, K) bf16, row stride GemmParams::lda. GemmParams::a must be null
  const uint16_t* w_bf16 = nullptr;   // (N, K) bf16 row-major (PyTorch Linear). GemmParams::w must be null
  uint16_t* c_bf16 = nullptr;         // (M, N) bf16, row stride ldc: the output when GemmParams::c is null
  const int32_t* m_device = nullptr;  // (1) int32 real M, or null; when set GemmParams::M is its upper bound
  GemmKernel kernel = GemmKernel::kAuto;
};

// The variant for a product of at most M_bound rows. `operands_aligned`: a_bf16 and w_bf16 16-byte
// aligned, lda % 8 == 0, ldc even, c (and residual) 8-byte aligned or c_bf16 4-byte aligned.
GemmKernel choose_gemm_kernel(int M_bound, int N, int K, bool operands_aligned = true);
const char* gemm_kernel_name(GemmKernel kernel);
// p: device pointers; p.a and p.w null (operands in x), exactly one of p.c and x.c_bf16 set; bias,
// residual (may alias p.c) and col_scale are float32.
void gemm(const GemmParams& p, const GemmDeviceExtras& x, void* stream);

// ---- attention ----------------------------------------------------------------------------------
// Multi-head self-attention over the packed list, each image over its own rows, softmax in float32,
// never materialising T x T scores.
//   kNaive: one warp per query row, float32 throughout, any D <= 256.
//   kFlash: FlashAttention-2 style, 64 query rows per block, 64-key tiles, bf16 mma.sync for Q K^T
//           and P V, online softmax; D in {32, 64, 96, 128}.
enum class AttentionKernel { kAuto, kNaive, kFlash };

struct AttentionDeviceExtras {
  int max_seqlen = 0;                  // host upper bound of every image's T (offsets[b+1] - offsets[b]);
                                       // sizes the grid: rows past it are NOT computed. Required.
  const uint16_t* qkv_bf16 = nullptr;  // (A, 3, H, D) bf16; the input when AttentionParams::qkv is null
  uint16_t* out_bf16 = nullptr;        // (A, H, D) bf16; the output when AttentionParams::out is null
  AttentionKernel kernel = AttentionKernel::kAuto;
};

bool attention_supported(int head_dim);  // some variant runs this head dim (1..256)
// `aligned`: qkv 16-byte aligned, out 8-byte (float32) or 4-byte (bf16) aligned.
AttentionKernel choose_attention_kernel(int head_dim, bool aligned = true);
const char* attention_kernel_name(AttentionKernel kernel);
// p: p.offsets (B + 1) on the device; exactly one of p.qkv / x.qkv_bf16 and one of p.out / x.out_bf16.
void attention(const AttentionParams& p, const AttentionDeviceExtras& x, void* stream);

// ---- layernorm ----------------------------------------------------------------------------------
// One warp per row, two passes (mean, then variance of the centred values) as the CPU does.
//   kSimple: any C, re-reads the row (from L1).   kVec: C % 128 == 0, C <= 1024, row in registers.
enum class LayerNormKernel { kAuto, kSimple, kVec };

struct LayerNormDeviceExtras {
  const int32_t* rows_device = nullptr;  // (1) int32 real row count, or null; then LayerNormParams::rows bounds it
  uint16_t* y_bf16 = nullptr;            // (rows, C) bf16 output, beside or instead of LayerNormParams::y
  LayerNormKernel kernel = LayerNormKernel::kAuto;
};

// `aligned`: x, y, gamma, beta 16-byte aligned and y_bf16 8-byte aligned.
LayerNormKernel choose_layernorm_kernel(int C, bool aligned = true);
// p: device pointers; at least one of p.y and x.y_bf16.
void layernorm(const LayerNormParams& p, const LayerNormDeviceExtras& x, void* stream);

// ---- elementwise --------------------------------------------------------------------------------
// y = bf16(x), round to nearest even: x (n) float32, y (n) bf16.
void convert_to_bf16(const float* x, uint16_t* y, int64_t n, void* stream);

// As the CPU op, bit for bit (no fused multiply-add): src (h, w, channels) uint8, out (3, out_h, out_w).
void image_normalize(const ImageNormalizeParams& p, void* stream);

// ---- token merging (token_merge.cu) -------------------------------------------------------------
// Per-patch statistics of window_score live in a workspace of this many floats ((gh * gw, 3) mean
// colours, then (gh * gw) textures).
int64_t window_score_workspace_floats(int gh, int gw);
struct WindowScoreDeviceExtras {
  float* workspace = nullptr;  // (window_score_workspace_floats(gh, gw)) float32 device scratch. Required.
};
// p: device pointers (image, levels, scores). Per-patch statistics are the CPU's exactly; scores
// differ from the CPU's by expf's rounding only (a few ulp).
void window_score(const WindowScoreParams& p, const WindowScoreDeviceExtras& x, void* stream);

// One image, one block: p: device pointers (levels, thresholds, scores, rects, count, token_of_patch);
// rects, *count and token_of_patch are exactly the CPU's. token_of_patch doubles as the scratch of
// the owner cells, so every cell of it is written.
void superpatch_select(const SuperpatchSelectParams& p, void* stream);

struct UnshareDeviceExtras {
  const int32_t* tokens_device = nullptr;  // (1) int32 real token count (e.g. superpatch_select's count), or
                                           // null; then UnshareParams::tokens bounds it
};
// p: device pointers. Copies only: bit-identical.
void unshare(const UnshareParams& p, const UnshareDeviceExtras& x, void* stream);

struct PatchGatherDeviceExtras {
  const int32_t* tokens_device = nullptr;  // (1) int32 real token count, or null; then PatchGatherParams::tokens bounds it
  uint16_t* out_bf16 = nullptr;            // (tokens, 3 * P * P) bf16, beside or instead of PatchGatherParams::out
};
// p: device pointers (pixels, rects, out); at least one of p.out and x.out_bf16. Same sums in the
// same order as the CPU: float32 results are bit-identical.
void patch_gather(const PatchGatherParams& p, const PatchGatherDeviceExtras& x, void* stream);

struct TokenPosEmbedDeviceExtras {
  int rows_bound = 0;  // host upper bound of A = offsets[batch] (sizes the grid; rows past it are not written). Required.
};
// p: device pointers, offsets included (A is read from offsets[batch] on the device). Bit-identical
// to the CPU.
void token_pos_embed(const TokenPosEmbedParams& p, const TokenPosEmbedDeviceExtras& x, void* stream);

// ---- early exits (token_compact.cu) -------------------------------------------------------------
struct TokenHaltDeviceExtras {
  int max_seqlen = 0;  // host upper bound of every image's T; sizes shared memory (8 bytes a row). Required:
                       // an image with more rows halts nothing.
};
int token_halt_max_rows();  // the largest max_seqlen token_halt accepts
// p: device pointers (offsets included). Halt flags equal the CPU's (confidence in double as there).
void token_halt(const TokenHaltParams& p, const TokenHaltDeviceExtras& x, void* stream);

struct TokenCompactDeviceExtras {
  int rows_bound = 0;  // host upper bound of A (= offsets[batch]); sizes the copy grid. Required.
};
// p: device pointers; new_offsets and src_row are written on the device (A' = new_offsets[batch]
// is never read back by the host). Copies only: bit-identical.
void token_compact(const TokenCompactParams& p, const TokenCompactDeviceExtras& x, void* stream);

struct TokenScatterDeviceExtras {
  const int32_t* rows_device = nullptr;  // (1) int32 real row count, or null; then TokenScatterParams::rows bounds it
};
// p: device pointers. Destination rows must be distinct (as on the CPU, where the order of duplicate
// writes is unspecified).
void token_scatter(const TokenScatterParams& p, const TokenScatterDeviceExtras& x, void* stream);

// The bookkeeping of the packed list (ops.h): integers only, so every entry equals the CPU exactly.
struct TokenRowsInitDeviceExtras {
  int rows_bound = 0;  // host upper bound of A (= offsets[batch], read on the device); sizes the grid. Required.
};
// p: device pointers (offsets included); rows past offsets[batch] are not written.
void token_rows_init(const TokenRowsInitParams& p, const TokenRowsInitDeviceExtras& x, void* stream);

struct TokenExitMarkDeviceExtras {
  const int32_t* rows_device = nullptr;  // (1) int32 real row count, or null; then TokenExitMarkParams::rows bounds it
};
// p: device pointers. Rects of distinct halted rows are distinct (rect_of_row is one row per rect).
void token_exit_mark(const TokenExitMarkParams& p, const TokenExitMarkDeviceExtras& x, void* stream);

struct TokenGatherDeviceExtras {
  const int32_t* rows_device = nullptr;  // (1) int32 real row count (e.g. new_offsets + batch), or null; then
                                         // TokenGatherParams::rows bounds it
};
// p: device pointers.
void token_gather(const TokenGatherParams& p, const TokenGatherDeviceExtras& x, void* stream);

// p: device pointers (counts included: the host knows no count). One block; batch <= 12,287.
void token_pack(const TokenPackParams& p, void* stream);

// ---- upsample (upsample.cu) ---------------------------------------------------------------------
// p: device pointers. Labels bit-identical to the CPU's; probs within expf's rounding.
void upsample(const UpsampleParams& p, void* stream);

// ---- conv and avg_pool (conv.cu) ----------------------------------------------------------------
// p: device pointers; dense (groups = 1) or depthwise, any k, stride, pad. float32 within rounding of
// the CPU (fma contraction, same order of the taps).
void conv(const ConvParams& p, void* stream);
// p: device pointers. Bit-identical to the CPU.
void avg_pool(const AvgPoolParams& p, void* stream);

}  // namespace step::cuda
