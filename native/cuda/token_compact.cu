// token_compact.cu: early exits on the GPU; the CUDA side of native/cpu/token_compact.cpp.
//   token_halt_kernel      one block per image. Pass 1: per row (threads over rows) the argmax (the
//                          CPU's loop, lowest index on ties) and the confidence 1 / sum_k exp(l_k -
//                          l_max) in double as the CPU, into shared memory. Pass 2: each halting
//                          candidate's rank within its class = the number of same-class candidates that
//                          beat it in the CPU's sort order (confidence desc, then row asc); it halts
//                          when rank >= top_k. O(T^2) per image (each thread scans all T rows from
//                          shared memory): ~16 M comparisons at T = 4096, far below the per-image GEMM
//                          time; a per-class sort is the upgrade if T grows.
//                          Only the exponential may differ from glibc's (CUDA's double exp is within
//                          1 ulp), and the confidence is then rounded to float, so the halt flags agree
//                          unless a double lands within 1e-16 of a float rounding boundary.
//                          With agreement (cell_label set), a pass 0 first writes each row's argmax on
//                          the cells of its rect (an image's cells belong to its block alone, so a
//                          block barrier orders it before pass 1), and pass 1 makes a row a candidate
//                          only when the cells around its rect carry its label, as the CPU does.
//   token_compact_kernel_offsets  ONE block over the whole list: images in order, rows in chunks of
//                          the block with an order-preserving block scan of the kept flags, writing
//                          src_row and new_offsets on the device (A is tens of thousands at most: a few
//                          dozen block scans).
//   token_compact_kernel_copy     one block per output row, out[r] = x[src_row[r]]; blocks past
//                          new_offsets[B] (read on the device) exit at once.
//   token_scatter_kernel   one block per source row, threads over K; blocks past the real count
//                          (rows_device, when set) exit at once.
// The bookkeeping of the packed list (the integers that follow its rows, ops.h), small kernels:
//   token_rows_init_kernel one thread per row up to the host bound, rows past offsets[B] (read on the
//                          device) exit; each finds its image by a linear walk of the offsets (B is small).
//   token_exit_mark_kernel one thread per row; rows past the real count (rows_device) exit.
//   token_gather_kernel    one thread per row; rows past the real count (rows_device) exit.
//   token_pack_kernel      ONE block: thread 0 computes the offsets and each image's first packed rect
//                          (B is small), then the block copies every image's rects.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr int kHaltThreads = 512;
constexpr int kScanThreads = 1024;
constexpr int kCopyThreads = 128;

// ---- token_halt ---------------------------------------------------------------------------------

struct HaltArgs {
  int K, prefix, max_rows;
  const int32_t* offsets;  // (B + 1)
  const float* logits;     // (A, K)
  float threshold;
  int top_k;
  uint8_t* halt;           // (A)
  // agreement (cell_label null: off); TokenHaltParams
  const int32_t* rect_of_row;  // (A)
  const TokenRect* rects;
  const int32_t *grid_offset, *grid_h, *grid_w;  // (B)
  int32_t* cell_label;         // (cells)
};

__device__ int halt_argmax(const float* l, int K) {
  int best = 0;
  float top = l[0];
  for (int k = 1; k < K; ++k)
    if (l[k] > top) best = k, top = l[k];
  return best;
}

// The CPU's agrees(): every cell just outside rect r's edges, inside the grid, has `label`.
__device__ bool halt_agrees(const HaltArgs& a, const TokenRect& r, int label) {
  const int gh = a.grid_h[r.image], gw = a.grid_w[r.image], S = r.size;
  const int32_t* labels = a.cell_label + a.grid_offset[r.image];
  for (int i = 0; i < S; ++i) {
    const int y = r.row + i, x = r.col + i;
    if (r.row > 0 && labels[(r.row - 1) * gw + x] != label) return false;
    if (r.row + S < gh && labels[(r.row + S) * gw + x] != label) return false;
    if (r.col > 0 && labels[y * gw + r.col - 1] != label) return false;
    if (r.col + S < gw && labels[y * gw + r.col + S] != label) return false;
  }
  return true;
}

__global__ void __launch_bounds__(kHaltThreads) token_halt_kernel(HaltArgs a) {
  STEP_DYNAMIC_SMEM(float, halt_smem);
  float* conf = halt_smem;                                          // (max_rows)
  int* cls = reinterpret_cast<int*>(halt_smem + a.max_rows);        // (max_rows) class, -1 if no candidate
  const int b = blockIdx.x, r0 = a.offsets[b], r1 = a.offsets[b + 1], T = r1 - r0;
  if (T > a.max_rows) {  // contract violation (the host bound is too small): nothing halts
    for (int i = threadIdx.x; i < T; i += blockDim.x) a.halt[r0 + i] = 0;
    return;
  }
  if (a.cell_label) {
    for (int i = threadIdx.x; i < T; i += blockDim.x) {
      const int rect = a.rect_of_row[r0 + i];
      if (rect < 0) continue;
      const TokenRect t = a.rects[rect];
      const int label = halt_argmax(a.logits + int64_t(r0 + i) * a.K, a.K), gw = a.grid_w[t.image];
      int32_t* labels = a.cell_label + a.grid_offset[t.image];
      for (int dy = 0; dy < t.size; ++dy)
        for (int dx = 0; dx < t.size; ++dx) labels[(t.row + dy) * gw + t.col + dx] = label;
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < T; i += blockDim.x) {
    cls[i] = -1;
    if (i < a.prefix) continue;
    const float* l = a.logits + int64_t(r0 + i) * a.K;  // (K)
    const int best = halt_argmax(l, a.K);
    const float top = l[best];
    double sum = 0;
    for (int k = 0; k < a.K; ++k) sum = __dadd_rn(sum, exp(__dsub_rn(double(l[k]), double(top))));
    const float c = float(__drcp_rn(sum));
    conf[i] = c;
    if (c >= a.threshold && (!a.cell_label || halt_agrees(a, a.rects[a.rect_of_row[r0 + i]], best))) cls[i] = best;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < T; i += blockDim.x) {
    uint8_t h = 0;
    const int k = cls[i];
    if (k >= 0) {
      const float c = conf[i];
      int rank = 0;
      for (int j = 0; j < T && rank < a.top_k; ++j)
        if (cls[j] == k && (conf[j] > c || (conf[j] == c && j < i))) ++rank;
      h = rank >= a.top_k;
    }
    a.halt[r0 + i] = h;
  }
}

// ---- token_compact ------------------------------------------------------------------------------

struct CompactArgs {
  int batch, C, rows_bound;
  const int32_t* offsets;  // (B + 1)
  const uint8_t* halt;     // (A)
  const float* x;          // (A, C)
  float* out;              // (A', C)
  int32_t* new_offsets;    // (B + 1)
  int32_t* src_row;        // (A')
};

__global__ void __launch_bounds__(kScanThreads) token_compact_kernel_offsets(CompactArgs a) {
  __shared__ int scratch[33];
  int kept = 0;  // rows kept so far, all images
  if (threadIdx.x == 0) a.new_offsets[0] = 0;
  for (int b = 0; b < a.batch; ++b) {
    const int r0 = a.offsets[b], r1 = a.offsets[b + 1];
    for (int c0 = r0; c0 < r1; c0 += blockDim.x) {
      const int r = c0 + threadIdx.x;
      const bool keep = r < r1 && !a.halt[r];
      int total = 0;
      const int at = kept + block_exclusive_scan(keep ? 1 : 0, scratch, &total);
      if (keep) a.src_row[at] = r;
      kept += total;
    }
    if (threadIdx.x == 0) a.new_offsets[b + 1] = kept;
  }
}

__global__ void __launch_bounds__(kCopyThreads) token_compact_kernel_copy(CompactArgs a) {
  const int r = blockIdx.x;
  if (r >= min(a.new_offsets[a.batch], a.rows_bound)) return;
  const float* src = a.x + int64_t(a.src_row[r]) * a.C;
  float* dst = a.out + int64_t(r) * a.C;
  for (int c = threadIdx.x; c < a.C; c += blockDim.x) dst[c] = src[c];
}

// ---- token_scatter ------------------------------------------------------------------------------

struct ScatterArgs {
  int rows, K;
  const float* src;       // (rows, K)
  const int32_t* index;   // (rows)
  const uint8_t* mask;    // (rows) or null
  float* table;           // (table rows, K)
  const int32_t* rows_device;  // (1) or null
};

__global__ void __launch_bounds__(kCopyThreads) token_scatter_kernel(ScatterArgs a) {
  const int r = blockIdx.x;
  if (a.rows_device && r >= *a.rows_device) return;
  const int dst_row = a.index[r];
  if (dst_row < 0 || (a.mask && !a.mask[r])) return;
  const float* src = a.src + int64_t(r) * a.K;
  float* dst = a.table + int64_t(dst_row) * a.K;
  for (int k = threadIdx.x; k < a.K; k += blockDim.x) dst[k] = src[k];
}

// ---- token bookkeeping: token_rows_init, token_exit_mark, token_gather, token_pack ----------------

constexpr int kRowThreads = 256;

// The per-row bookkeeping at the start of a forward, from the offsets alone: row r of image b is a
// prefix token (rect -1) or rect offsets[b] - b * prefix + (r - offsets[b] - prefix); every rect starts
// as "went through all blocks".
__global__ void token_rows_init_kernel(int B, int prefix, int depth, const int32_t* offsets, int32_t* rect_of_row,
                                       int32_t* rect_exit, int rows_bound) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_bound || r >= offsets[B]) return;
  int b = 0;
  while (offsets[b + 1] <= r) ++b;
  const int j = r - offsets[b];
  const int rect = j < prefix ? -1 : offsets[b] - b * prefix + (j - prefix);
  rect_of_row[r] = rect;
  if (rect >= 0) rect_exit[rect] = depth;
}

// rect_exit[rect_of_row[r]] = layer for every halted row r < *rows (when rows is set) that carries a rect.
__global__ void token_exit_mark_kernel(const int32_t* rows, const uint8_t* halt, const int32_t* rect_of_row, int layer,
                                       int32_t* rect_exit, int rows_bound) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_bound || (rows && r >= *rows)) return;
  if (halt[r] && rect_of_row[r] >= 0) rect_exit[rect_of_row[r]] = layer;
}

// out[r] = in[src_row[r]] for r < *rows (when rows is set): the rect of each row after compaction.
__global__ void token_gather_kernel(const int32_t* rows, const int32_t* src_row, const int32_t* in, int32_t* out,
                                    int rows_bound) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows_bound || (rows && r >= *rows)) return;
  out[r] = in[src_row[r]];
}

// Builds the packed token list from each image's selected rects (superpatch_select wrote image b's
// count[b] rects at stage + grid_offset[b]): offsets (B + 1), the total rect count, and the packed
// rects in image order. One block; B is small and the offsets are computed by thread 0.
__global__ void token_pack_kernel(int B, int prefix, const int32_t* counts, const int32_t* grid_offset,
                                  const TokenRect* stage, TokenRect* rects, int32_t* offsets, int32_t* rect_count) {
  STEP_DYNAMIC_SMEM(int32_t, first);  // (B + 1) first packed rect of each image
  if (threadIdx.x == 0) {
    int32_t n = 0;
    offsets[0] = 0;
    for (int b = 0; b < B; ++b) first[b] = n, n += counts[b], offsets[b + 1] = n + (b + 1) * prefix;
    first[B] = n;
    *rect_count = n;
  }
  __syncthreads();
  for (int b = 0; b < B; ++b)
    for (int t = threadIdx.x; t < counts[b]; t += blockDim.x) rects[first[b] + t] = stage[grid_offset[b] + t];
}

// ---- launchers ----------------------------------------------------------------------------------

int halt_smem_bytes(int max_rows) { return max_rows * int(sizeof(float) + sizeof(int)); }

void token_halt_launch(const HaltArgs& a, int batch, cudaStream_t stream) {
  NvtxRange range("token_halt");
  static std::atomic<uint64_t> done{0};
  const int smem = halt_smem_bytes(a.max_rows);
  ensure_dynamic_smem(token_halt_kernel, smem, done);
  launch<token_halt_kernel>(batch, kHaltThreads, smem, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_compact_launch(const CompactArgs& a, cudaStream_t stream) {
  NvtxRange range("token_compact");
  launch<token_compact_kernel_offsets>(1, kScanThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
  if (a.rows_bound == 0) return;
  launch<token_compact_kernel_copy>(a.rows_bound, kCopyThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_scatter_launch(const ScatterArgs& a, cudaStream_t stream) {
  NvtxRange range("token_scatter");
  launch<token_scatter_kernel>(a.rows, kCopyThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_rows_init_launch(const TokenRowsInitParams& p, int rows_bound, cudaStream_t stream) {
  if (rows_bound == 0) return;
  launch<token_rows_init_kernel>(ceil_div(rows_bound, kRowThreads), kRowThreads, 0, stream, p.batch, p.prefix, p.depth,
                                 p.offsets, p.rect_of_row, p.rect_exit, rows_bound);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_exit_mark_launch(const TokenExitMarkParams& p, const int32_t* rows_device, cudaStream_t stream) {
  launch<token_exit_mark_kernel>(ceil_div(p.rows, kRowThreads), kRowThreads, 0, stream, rows_device, p.halt,
                                 p.rect_of_row, p.layer, p.rect_exit, p.rows);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_gather_launch(const TokenGatherParams& p, const int32_t* rows_device, cudaStream_t stream) {
  launch<token_gather_kernel>(ceil_div(p.rows, kRowThreads), kRowThreads, 0, stream, rows_device, p.src_row, p.in,
                              p.out, p.rows);
  STEP_CUDA_CHECK_LAUNCH();
}

void token_pack_launch(const TokenPackParams& p, cudaStream_t stream) {
  launch<token_pack_kernel>(1, kRowThreads, size_t(p.batch + 1) * sizeof(int32_t), stream, p.batch, p.prefix, p.counts,
                            p.grid_offset, p.stage, p.rects, p.offsets, p.rect_count);
  STEP_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- public entries -----------------------------------------------------------------------------

// 227 KB of shared memory per block on sm_90 (99 KB on sm_86 / 89, 163 KB on sm_80): 8 bytes a row.
int token_halt_max_rows() { return 99 * 1024 / 8; }

void token_halt(const TokenHaltParams& p, const TokenHaltDeviceExtras& x, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.K > 0 && p.prefix >= 0 && p.top_k >= 0, "cuda::token_halt: bad batch, K, prefix or top_k");
  STEP_CHECK(!std::isnan(p.threshold), "cuda::token_halt: threshold not set");
  STEP_CHECK(x.max_seqlen >= 0 && x.max_seqlen <= token_halt_max_rows(),
             "cuda::token_halt: max_seqlen must be in 0 .. token_halt_max_rows()");
  if (p.batch == 0) return;
  STEP_CHECK(p.offsets && p.logits && p.halt, "cuda::token_halt: missing offsets, logits or halt");
  STEP_CHECK(!p.cell_label || (p.rect_of_row && p.rects && p.grid_offset && p.grid_h && p.grid_w),
             "cuda::token_halt: agreement needs the grids");
  const HaltArgs a{p.K, p.prefix, x.max_seqlen, p.offsets, p.logits, p.threshold, p.top_k, p.halt,
                   p.rect_of_row, p.rects, p.grid_offset, p.grid_h, p.grid_w, p.cell_label};
  token_halt_launch(a, p.batch, as_stream(stream));
}

void token_compact(const TokenCompactParams& p, const TokenCompactDeviceExtras& x, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.C > 0 && x.rows_bound >= 0, "cuda::token_compact: bad batch, C or rows_bound");
  STEP_CHECK(p.offsets && p.new_offsets && (x.rows_bound == 0 || (p.halt && p.x && p.out && p.src_row)),
             "cuda::token_compact: missing buffer");
  STEP_CHECK(p.out != p.x || x.rows_bound == 0, "cuda::token_compact: out must not alias x");
  const CompactArgs a{p.batch, p.C, x.rows_bound, p.offsets, p.halt, p.x, p.out, p.new_offsets, p.src_row};
  token_compact_launch(a, as_stream(stream));
}

void token_scatter(const TokenScatterParams& p, const TokenScatterDeviceExtras& x, void* stream) {
  STEP_CHECK(p.rows >= 0 && p.K > 0, "cuda::token_scatter: bad rows or K");
  if (p.rows == 0) return;
  STEP_CHECK(p.src && p.index && p.table, "cuda::token_scatter: missing src, index or table");
  const ScatterArgs a{p.rows, p.K, p.src, p.index, p.mask, p.table, x.rows_device};
  token_scatter_launch(a, as_stream(stream));
}

void token_rows_init(const TokenRowsInitParams& p, const TokenRowsInitDeviceExtras& x, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.prefix >= 0 && x.rows_bound >= 0, "cuda::token_rows_init: bad batch, prefix or rows_bound");
  if (x.rows_bound == 0) return;
  STEP_CHECK(p.offsets && p.rect_of_row && p.rect_exit, "cuda::token_rows_init: missing offsets, rect_of_row or rect_exit");
  token_rows_init_launch(p, x.rows_bound, as_stream(stream));
}

void token_exit_mark(const TokenExitMarkParams& p, const TokenExitMarkDeviceExtras& x, void* stream) {
  STEP_CHECK(p.rows >= 0, "cuda::token_exit_mark: bad rows");
  if (p.rows == 0) return;
  STEP_CHECK(p.halt && p.rect_of_row && p.rect_exit, "cuda::token_exit_mark: missing halt, rect_of_row or rect_exit");
  token_exit_mark_launch(p, x.rows_device, as_stream(stream));
}

void token_gather(const TokenGatherParams& p, const TokenGatherDeviceExtras& x, void* stream) {
  STEP_CHECK(p.rows >= 0, "cuda::token_gather: bad rows");
  if (p.rows == 0) return;
  STEP_CHECK(p.src_row && p.in && p.out, "cuda::token_gather: missing src_row, in or out");
  STEP_CHECK(p.in != p.out, "cuda::token_gather: out must not alias in");
  token_gather_launch(p, x.rows_device, as_stream(stream));
}

void token_pack(const TokenPackParams& p, void* stream) {
  STEP_CHECK(p.batch >= 0 && p.prefix >= 0, "cuda::token_pack: bad batch or prefix");
  STEP_CHECK(int64_t(p.batch + 1) * 4 <= 48 * 1024, "cuda::token_pack: at most 12,287 images");
  STEP_CHECK(p.offsets && p.rect_count && (p.batch == 0 || (p.counts && p.grid_offset && p.stage && p.rects)),
             "cuda::token_pack: missing buffer");
  token_pack_launch(p, as_stream(stream));
}

}  // namespace step::cuda
