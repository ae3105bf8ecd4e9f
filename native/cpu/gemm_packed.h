// gemm_packed.h: the CPU GEMM's packing and micro-kernels for callers inside native/cpu that choose
// their own blocking and reuse packed operands across calls (attention packs K and V once per
// head and multiplies every query block by them). gemm() itself is unchanged by this header.
// A packed panel holds `vectors` vectors of length `depth` (rows of A, or columns of W, i.e. rows
// of the (N, K) weight) in slivers of `width` vectors: sliver s is (depth, width) float32,
// depth-major ([k][width] contiguous), zero-padded past the last vector; slivers follow each other
// depth * width floats apart. The micro-kernel reads A in slivers of MR rows and W in slivers of
// NR columns.
#pragma once
#include <cstddef>
#include <cstdint>

namespace step::cpu {

struct MicroTile {
  int mr, nr;  // rows of A and columns of W one micro-kernel call computes
};
// The chosen micro-kernel's tile (AVX-512 14 x 32, AVX2 6 x 16, generic 4 x 8).
MicroTile gemm_micro_tile();

// How the vectors to pack are stored.
enum class PanelLayout {
  kVectorRows,  // vector v, element k at src[v * ld + k] (rows of A; a PyTorch Linear weight)
  kDepthRows,   // vector v, element k at src[k * ld + v] (A^T; W^T): packs by copying rows
};

size_t packed_panel_floats(int vectors, int depth, int width);

// Packs into out (packed_panel_floats floats; 64-byte alignment helps the kernels' loads).
void pack_panel(const float* src, int vectors, int depth, int64_t ld, PanelLayout layout, int width,
                float* out);

// c (M, N) = A W^T, or c += A W^T when accumulate is set, over one K block of depth kc, on the
// calling thread.
//   w: packed W in slivers of NR columns, sliver j at w + j * w_stride, each (kc, NR) depth-major.
//   a: A in slivers of MR rows, sliver i at a + i * a_stride, its MR values of depth k at
//      + k * a_step. Packed A has a_step = MR; an A stored (K, M) with rows a_step apart needs no
//      packing (a_stride = MR), provided M rounded up to MR columns are readable.
//   A K block [k0, k0 + kc) of panels packed at full depth starts at a + k0 * a_step, w + k0 * NR.
//   c: (M, N) row stride ldc.
void gemm_packed_block(int M, int N, int kc, const float* a, int64_t a_stride, int64_t a_step,
                       const float* w, int64_t w_stride, float* c, int64_t ldc, bool accumulate);

}  // namespace step::cpu
