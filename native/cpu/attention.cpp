// attention.cpp: multi-head self-attention over a packed list of images (each image attends only to
// its own rows, offsets as in FlashAttention's cu_seqlens).
// Algorithm: per (image, head), K and V are packed once, straight from qkv, into the GEMM
// micro-kernel's operand format (gemm_packed.h) and reused by every query block. For a block of
// `rows` queries (at most kMaxQueryBlock):
//   1. S^T (T, rows) = K Q_blk^T   the keys are the long side, so they are the A operand
//   2. down each column of S^T (one query): m = max, S^T = exp(scale * (S^T - m)), l = column sum;
//      float32, max-subtracted, each query a SIMD lane (no reductions across lanes)
//   3. out_blk = (P V) / l          P (rows, T) is S^T read in place as the A operand (the kernel
//                                   takes a row stride between k), so P is never packed; the 1 / l
//                                   scales the (rows, D) result instead of the (T, rows) P
// Work items are (image, head, query block), spread over the thread pool; each runs on one thread.
// Memory: qkv (A, 3, H, D) as timm's qkv Linear writes it; out (A, H, D); per (image, head) the
// packed K and V panels (T x D each) in a buffer of the calling thread, per item Q_blk packed and
// S^T (T, 128) in the worker's; all kept for the next call, like gemm.cpp's (allocating the panels
// per call measured 1-2% slower).
// Speed (ViT-S, H = 6, D = 64, 2 threads, Zen 4; ms for one layer's attention at T = 1025 / 4097):
// gemm() twice per block (K and V^T packed per call, S row-major, P packed per call) 14.3 / 209;
// K and V packed once per head 11.5 / 176; S^T, P packed by a copy 9.9 / 156; P read in place
// 9.1 / 143; the AVX-512 softmax 8.7 / 136, i.e. 184 / 190 GFLOP/s (the large GEMMs: about 195).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_backend.h"
#include "gemm_packed.h"
#include "parallel.h"
#include "vec_math.h"

namespace step::cpu {
namespace {

// Query rows per work item, at most; the largest multiple of MR up to it is used (126 with
// AVX-512), so that P V has no partial micro-tile and Q K^T (128 columns) next to none. ViT-S,
// 1 thread, portable softmax, T = 1025: 17.9 ms per layer's attention, 64 rows 18.9, 96 rows 19.1,
// 192 rows 18.2; T = 4097: 283 ms, 64 rows 297, 192 rows 295.
constexpr int kMaxQueryBlock = 128;
// Longest K block of P V (keys per micro-kernel call); the blocks are cut nearly equal. 128 and 512
// measured within 1% of 256 at T = 1025 and 4097.
constexpr int kKeyBlock = 256;
constexpr int kLanes = 16;

// A float buffer aligned to a cache line, grown on demand, kept for the thread's next call.
float* aligned(std::vector<float>& storage, size_t floats) {
  if (storage.size() < floats + 16) storage.resize(floats + 16);
  auto addr = reinterpret_cast<uintptr_t>(storage.data());
  return storage.data() + (64 - addr % 64) % 64 / sizeof(float);
}

// Softmax down the columns of s (T, ld), columns [0, cols) rounded up to kLanes (ld >= that), in
// place but unnormalised: s = exp(scale * (s - column max)); inv_sum[j] = 1 / column sum. Every
// exponent is <= 0, so exp_nonpositive applies. Each column is a SIMD lane, so nothing is reduced
// across lanes; the loops run along a row of s with restrict pointers because GCC 12 leaves the
// max scalar otherwise (it versions the loop for aliasing, or fails to SLP-vectorise a max). The
// sums are taken in chunks of kSumChunk rows, which keeps the float rounding error of T = 4k terms
// at that of a few hundred.
constexpr int kSumChunk = 64;
STEP_SIMD_CLONES void softmax_columns(float* __restrict s, int T, int cols, int64_t ld, float scale,
                                      float* __restrict inv_sum) {
  float mx[kMaxQueryBlock], sum[kMaxQueryBlock], part[kMaxQueryBlock];
  const int width = (cols + kLanes - 1) / kLanes * kLanes;
  for (int j = 0; j < width; ++j) mx[j] = -INFINITY, sum[j] = 0.f;
  for (int t = 0; t < T; ++t) {
    const float* __restrict r = s + t * ld;
    for (int j = 0; j < width; ++j) mx[j] = r[j] > mx[j] ? r[j] : mx[j];
  }
  for (int j = 0; j < width; ++j) mx[j] *= scale;
  for (int t0 = 0; t0 < T; t0 += kSumChunk) {
    for (int j = 0; j < width; ++j) part[j] = 0.f;
    for (int t = t0; t < std::min(T, t0 + kSumChunk); ++t) {
      float* __restrict r = s + t * ld;
      for (int j = 0; j < width; ++j) {
        r[j] = exp_nonpositive(r[j] * scale - mx[j]);
        part[j] += r[j];
      }
    }
    for (int j = 0; j < width; ++j) sum[j] += part[j];
  }
  for (int j = 0; j < cols; ++j) inv_sum[j] = 1.f / sum[j];
}

#if defined(__x86_64__)
// softmax_columns with AVX-512 intrinsics: e^x as 2^(x log2 e), the 2^f of the fraction a
// degree-6 polynomial (Cephes exp2f, 1.3 ulp on [-0.5, 0.5]) and the 2^n by vscalefps, which also
// gives 0 for any n far below -126 without a clamp: 10 vector instructions per 16 values. GCC's
// vectorisation of the portable loop (masked, with spills) is 1.45x slower, which made the
// attention 5-6% slower (ViT-S, 1 thread, T = 1025: 17.9 against 16.9 ms; T = 4097: 277 against
// 264 ms).
// Zero-masked forms with every lane kept: the unmasked intrinsics start from _mm512_undefined_ps,
// which makes g++ 12 warn -Wmaybe-uninitialized (as in gemm.cpp).
constexpr __mmask16 kAll = 0xffff;

// The column maxima of s (T, ld) over strips of kLanes columns.
__attribute__((target("avx512f"), always_inline)) inline void column_max_avx512(
    const float* s, int T, int strips, int64_t ld, __m512* mx) {
  for (int j = 0; j < strips; ++j) mx[j] = _mm512_set1_ps(-INFINITY);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < strips; ++j)
      mx[j] = _mm512_maskz_max_ps(kAll, mx[j], _mm512_loadu_ps(s + t * ld + j * kLanes));
}

// 2^(x k - shift) for x k - shift <= 0 (k = scale log2 e, shift = k * column max).
__attribute__((target("avx512f"), always_inline)) inline __m512 exp_shifted_avx512(__m512 x, __m512 k,
                                                                                   __m512 shift) {
  constexpr float kExp2[6] = {1.535336188319500e-4f, 1.339887440266574e-3f,
                              9.618437357674640e-3f, 5.550332471162809e-2f,
                              2.402264791363012e-1f, 6.931472028550421e-1f};
  const __m512 y = _mm512_fmsub_ps(x, k, shift);  // <= 0
  const __m512 n = _mm512_maskz_roundscale_ps(kAll, y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);
  __m512 p = _mm512_set1_ps(kExp2[0]);
  for (int c = 1; c < 6; ++c) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2[c]));
  return _mm512_maskz_scalef_ps(kAll, _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f)), n);
}

__attribute__((target("avx512f"), always_inline)) inline void store_inv_sum(__m512 sum, int j, int cols,
                                                                            float* inv_sum) {
  alignas(64) float lane_sum[kLanes];
  _mm512_store_ps(lane_sum, sum);
  for (int l = 0; l < kLanes && j * kLanes + l < cols; ++l) inv_sum[j * kLanes + l] = 1.f / lane_sum[l];
}

__attribute__((target("avx512f"))) void softmax_columns_avx512(float* s, int T, int cols,
                                                                 int64_t ld, float scale,
                                                                 float* inv_sum) {
  const int strips = (cols + kLanes - 1) / kLanes;
  __m512 mx[kMaxQueryBlock / kLanes];
  column_max_avx512(s, T, strips, ld, mx);
  const __m512 k = _mm512_set1_ps(scale * 1.44269504088896341f);
  for (int j = 0; j < strips; ++j) {
    const __m512 shift = _mm512_mul_ps(mx[j], k);
    __m512 sum = _mm512_setzero_ps();
    for (int t0 = 0; t0 < T; t0 += kSumChunk) {
      __m512 part = _mm512_setzero_ps();
      for (int t = t0; t < std::min(T, t0 + kSumChunk); ++t) {
        float* r = s + t * ld + j * kLanes;
        const __m512 e = exp_shifted_avx512(_mm512_loadu_ps(r), k, shift);
        _mm512_storeu_ps(r, e);
        part = _mm512_add_ps(part, e);
      }
      sum = _mm512_add_ps(sum, part);
    }
    store_inv_sum(sum, j, cols, inv_sum);
  }
}

// softmax_columns_avx512 for the bfloat16 P V: the same sums of the same float32 exponentials, which
// go straight to `pairs` (steps(T), ld) as pairs of keys rounded to bfloat16 (gemm_packed.h's format,
// key 2s in the low half, a zero past an odd T) instead of back into s: no second pass over P.
// Where the bfloat16 GEMM kernel is AVX512_BF16's.
__attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16"))) void softmax_columns_bf16(
    float* s, int T, int cols, int64_t ld, float scale, float* inv_sum, float* pairs) {
  const int strips = (cols + kLanes - 1) / kLanes;
  __m512 mx[kMaxQueryBlock / kLanes];
  column_max_avx512(s, T, strips, ld, mx);
  const __m512 k = _mm512_set1_ps(scale * 1.44269504088896341f);
  for (int j = 0; j < strips; ++j) {
    const __m512 shift = _mm512_mul_ps(mx[j], k);
    __m512 sum = _mm512_setzero_ps();
    for (int t0 = 0; t0 < T; t0 += kSumChunk) {  // kSumChunk is even: a pair never straddles chunks
      __m512 part = _mm512_setzero_ps();
      for (int t = t0; t < std::min(T, t0 + kSumChunk); t += 2) {
        const __m512 e0 = exp_shifted_avx512(_mm512_loadu_ps(s + t * ld + j * kLanes), k, shift);
        part = _mm512_add_ps(part, e0);
        __m512 e1 = _mm512_setzero_ps();
        if (t + 1 < T) {
          e1 = exp_shifted_avx512(_mm512_loadu_ps(s + (t + 1) * ld + j * kLanes), k, shift);
          part = _mm512_add_ps(part, e1);
        }
        const __m512i lo = _mm512_maskz_cvtepu16_epi32(kAll, __m256i(_mm512_cvtneps_pbh(e0)));
        const __m512i hi = _mm512_maskz_slli_epi32(
            kAll, _mm512_maskz_cvtepu16_epi32(kAll, __m256i(_mm512_cvtneps_pbh(e1))), 16);
        _mm512_storeu_si512(pairs + (t / 2) * ld + j * kLanes, _mm512_or_si512(lo, hi));
      }
      sum = _mm512_add_ps(sum, part);
    }
    store_inv_sum(sum, j, cols, inv_sum);
  }
}
#endif

using SoftmaxColumns = void (*)(float* s, int T, int cols, int64_t ld, float scale, float* inv_sum);

// The AVX-512 softmax where the GEMM runs its AVX-512 kernel (same CPU check, and forcing a lower
// kernel with STEP_SEG_GEMM_KERNEL tests the portable softmax as well).
SoftmaxColumns choose_softmax() {
#if defined(__x86_64__)
  if (std::strcmp(gemm_kernel_name(), "avx512") == 0) return softmax_columns_avx512;
#endif
  return softmax_columns;
}

}  // namespace

void attention(const AttentionParams& p, Precision precision) {
  const int H = p.heads, D = p.head_dim, C = H * D, row = 3 * C;
  const MicroTile tile = gemm_micro_tile(precision);
  const int mr = tile.mr, nr = tile.nr;
  // bfloat16: both products take pairs of k (gemm_packed.h); P is rounded into a copy of S^T
  const bool pairs = tile.k_per_step == 2;
  auto steps = [&](int k) { return pairs ? (k + 1) / 2 : k; };
  const int query_block = kMaxQueryBlock - kMaxQueryBlock % mr;
  static const SoftmaxColumns softmax = choose_softmax();
  // the fused softmax-to-pairs needs AVX512_BF16 and serves only its kernel (the portable twin keeps
  // the second pass) and only the AVX-512 softmax's rows (16 lanes)
  const bool fused_pairs = pairs && std::strcmp(gemm_kernel_name(precision), "avx512bf16") == 0 &&
                           softmax != softmax_columns;

  // Packed K (slivers of MR keys, depth D) and V (slivers of NR head channels, depth T) of every
  // (image, head), packed once straight from qkv.
  std::vector<size_t> panel_at(size_t(p.batch) * H * 2 + 1, 0);
  auto line = [](size_t floats) { return (floats + 15) / 16 * 16; };
  for (int b = 0; b < p.batch; ++b) {
    int T = p.offsets[b + 1] - p.offsets[b];
    for (int h = 0; h < H; ++h) {
      size_t i = (size_t(b) * H + h) * 2;
      panel_at[i + 1] = panel_at[i] + line(packed_panel_floats(T, D, mr, precision));
      panel_at[i + 2] = panel_at[i + 1] + line(packed_panel_floats(D, T, nr, precision));
    }
  }
  thread_local std::vector<float> panel_storage;
  float* panels = aligned(panel_storage, panel_at.back());
  parallel_for(int64_t(p.batch) * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int b = int(item / H), h = int(item % H);
      int t0 = p.offsets[b], T = p.offsets[b + 1] - t0;
      const float* k = p.qkv + int64_t(t0) * row + C + h * D;  // (T, D) row stride 3C
      pack_panel(k, T, D, row, PanelLayout::kVectorRows, mr, panels + panel_at[item * 2], precision);
      pack_panel(k + C, D, T, row, PanelLayout::kDepthRows, nr, panels + panel_at[item * 2 + 1],
                 precision);
    }
  });

  // Work list of (image, head, first query row).
  struct Item {
    int b, h, q0;
  };
  std::vector<Item> items;
  for (int b = 0; b < p.batch; ++b) {
    int T = p.offsets[b + 1] - p.offsets[b];
    for (int h = 0; h < H; ++h)
      for (int q0 = 0; q0 < T; q0 += query_block) items.push_back({b, h, q0});
  }

  // S^T row stride: room for the NR-padded columns of step 1, the kLanes-padded ones of step 2 and
  // the MR-padded ones step 3 reads (NR and kLanes are powers of two); 128 floats with every
  // kernel.
  const int pad = std::max(nr, kLanes);
  const int64_t ld_s = (query_block + pad - 1) / pad * pad;
  parallel_for(int64_t(items.size()), 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> q_storage, s_storage, sum_storage, p_storage;
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items[i];
      const int t0 = p.offsets[it.b], T = p.offsets[it.b + 1] - t0;
      const int rows = std::min(query_block, T - it.q0);
      const float* k_packed = panels + panel_at[(size_t(it.b) * H + it.h) * 2];
      const float* v_packed = panels + panel_at[(size_t(it.b) * H + it.h) * 2 + 1];
      float* q_packed = aligned(q_storage, packed_panel_floats(rows, D, nr, precision));  // W of step 1
      float* st = aligned(s_storage, size_t(T) * ld_s);                         // S^T (T, ld_s)
      float* inv_sum = aligned(sum_storage, kMaxQueryBlock);                    // (rows)

      // 1. S^T (T, rows) = K (T, D) . Q_blk^T, Q_blk (rows, D) row stride 3C. The columns past rows
      // up to the next multiple of NR come out 0 (Q_blk is packed zero-padded): full-width tiles
      // take the vector epilogue (the partial last sliver cost 8% in write_tile_scalar).
      const int q_cols = (rows + nr - 1) / nr * nr;
      pack_panel(p.qkv + int64_t(t0 + it.q0) * row + it.h * D, rows, D, row,
                 PanelLayout::kVectorRows, nr, q_packed, precision);
      for (int k0 = 0; k0 < D; k0 += kKeyBlock) {  // one block unless D > kKeyBlock (even)
        int kc = std::min(kKeyBlock, D - k0);
        gemm_packed_block(T, q_cols, kc, k_packed + steps(k0) * mr, int64_t(steps(D)) * mr, mr,
                          q_packed + steps(k0) * nr, int64_t(steps(D)) * nr, st, ld_s, k0 > 0,
                          precision);
      }

      // 2. unnormalised softmax down the columns; for bfloat16, P rounded into pairs of keys
      // (steps(T), ld_s), read in place like S^T: by the fused softmax where AVX512_BF16 runs,
      // else by a second pass
      float* p2 = pairs ? aligned(p_storage, size_t(steps(T)) * ld_s) : nullptr;
#if defined(__x86_64__)
      if (fused_pairs && pairs)
        softmax_columns_bf16(st, T, rows, ld_s, p.scale, inv_sum, p2);
      else
#endif
      softmax(st, T, rows, ld_s, p.scale, inv_sum);

      // 3. out_blk (rows, D) = P (rows, T) . V (T, D), then scaled by 1 / l per row. A = P is
      // S^T itself: MR queries side by side in each row, rows ld_s apart (reading it in place
      // instead of packing a copy made the attention 8% faster). The columns past rows feed only
      // micro-tile rows that are not stored.
      const float* pa = pairs ? p2 : st;
      if (pairs && !fused_pairs)
        pack_panel(st, int(ld_s), T, ld_s, PanelLayout::kDepthRows, int(ld_s), p2, precision);
      float* out = p.out + int64_t(t0 + it.q0) * C + it.h * D;  // (rows, D) row stride C
      const int key_blocks = (T + kKeyBlock - 1) / kKeyBlock;
      auto key_begin = [&](int kb) {  // even for bfloat16 pairs, but the end T
        return kb == key_blocks ? T : int(int64_t(T) * kb / key_blocks) / tile.k_per_step * tile.k_per_step;
      };
      for (int kb = 0; kb < key_blocks; ++kb) {
        const int k0 = key_begin(kb), kc = key_begin(kb + 1) - k0;
        gemm_packed_block(rows, D, kc, pa + steps(k0) * ld_s, mr, ld_s,
                          v_packed + int64_t(steps(k0)) * nr, int64_t(steps(T)) * nr, out, C, kb > 0,
                          precision);
      }
      for (int r = 0; r < rows; ++r)
        for (int d = 0; d < D; ++d) out[int64_t(r) * C + d] *= inv_sum[r];
    }
  });
}

}  // namespace step::cpu
