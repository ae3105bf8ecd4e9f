// gemm_packed.h: the CPU GEMM's packing and micro-kernels for callers inside native/cpu that choose
// their own blocking and reuse packed operands across calls (attention packs K and V once per
// head and multiplies every query block by them). gemm() itself is unchanged by this header.
// A packed panel holds `vectors` vectors of length `depth` (rows of A, or columns of W, i.e. rows
// of the (N, K) weight) in slivers of `width` vectors: sliver s is (steps, width) values,
// step-major ([step][width] contiguous), zero-padded past the last vector; slivers follow each other
// steps * width floats apart. A step is one k of float32 (Precision::kFp32), or for kBf16 a pair of
// k as two bfloat16 in the 32 bits of one float (k even in the low half; an odd depth's last pair
// is padded with zero): steps = depth, or (depth + 1) / 2. The micro-kernel reads A in slivers of
// MR rows and W in slivers of NR columns. Every function takes the precision whose kernel it
// serves; kBf16 on a CPU without a bfloat16 kernel means the float32 one (MicroTile says which).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/ops.h"

namespace step::cpu {

struct MicroTile {
  int mr, nr;       // rows of A and columns of W one micro-kernel call computes
  int k_per_step;   // 1 (float32) or 2 (bfloat16 pairs)
};
// The chosen micro-kernel's tile (AVX-512 14 x 32, AVX2 6 x 16, generic 4 x 8; bfloat16 the same).
MicroTile gemm_micro_tile(Precision precision = Precision::kFp32);

// How the vectors to pack are stored.
enum class PanelLayout {
  kVectorRows,  // vector v, element k at src[v * ld + k] (rows of A; a PyTorch Linear weight)
  kDepthRows,   // vector v, element k at src[k * ld + v] (A^T; W^T): packs by copying rows
};

size_t packed_panel_floats(int vectors, int depth, int width, Precision precision = Precision::kFp32);

// Packs into out (packed_panel_floats floats; 64-byte alignment helps the kernels' loads).
void pack_panel(const float* src, int vectors, int depth, int64_t ld, PanelLayout layout, int width,
                float* out, Precision precision = Precision::kFp32);

// c (M, N) = A W^T, or c += A W^T when accumulate is set, over one K block of depth kc, on the
// calling thread.
//   w: packed W in slivers of NR columns, sliver j at w + j * w_stride, each (kc, NR) depth-major.
//   a: A in slivers of MR rows, sliver i at a + i * a_stride, its MR values of step s at
//      + s * a_step. Packed A has a_step = MR; an A stored (steps, M) with rows a_step apart needs
//      no packing (a_stride = MR), provided M rounded up to MR columns are readable.
//   A K block [k0, k0 + kc) of panels packed at full depth starts at a + steps(k0) * a_step,
//   w + steps(k0) * NR (k0 even for bfloat16).
//   c: (M, N) row stride ldc.
void gemm_packed_block(int M, int N, int kc, const float* a, int64_t a_stride, int64_t a_step,
                       const float* w, int64_t w_stride, float* c, int64_t ldc, bool accumulate,
                       Precision precision = Precision::kFp32);

}  // namespace step::cpu
