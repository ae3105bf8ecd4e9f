// mma.cuh: the tensor-core building blocks of gemm.cu and attention.cu, as inline PTX for sm_80 and
// newer (Ampere's warp-level mma.sync also runs on Ada and Hopper): asynchronous global -> shared
// copies (cp.async), shared -> register fragment loads (ldmatrix) and the bf16 matrix product
// mma.sync.m16n8k16 with float32 accumulation.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"), for lane
// l of the warp, g = l / 4 (the "group", 0..7) and t = l % 4 (the thread in the group):
//   A, 16 x 16 row-major (rows m, columns k), four .b32 registers of two bf16 each:
//     a0 = A[g][2t, 2t+1]   a1 = A[g+8][2t, 2t+1]   a2 = A[g][2t+8, 2t+9]   a3 = A[g+8][2t+8, 2t+9]
//   B, 16 x 8 "col" (stored as [n][k], k contiguous: exactly a PyTorch Linear weight, or K of
//     attention), two registers:   b0 = B[k = 2t, 2t+1][n = g]   b1 = B[k = 2t+8, 2t+9][n = g]
//   C / D, 16 x 8 float32, four registers:
//     c0, c1 = C[g][2t, 2t+1]   c2, c3 = C[g+8][2t, 2t+1]
// The lower-index element of a pair sits in the low 16 bits of its register.
//
// ldmatrix.x4 loads four 8 x 8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of matrix i
// (16-byte aligned rows), and lane l receives row l / 4, elements 2(l % 4) and 2(l % 4) + 1 of each
// matrix: the A / B fragment layout above. With .trans it receives the transposed matrix, which
// turns a [k][n] (n contiguous) tile such as attention's V into the "col" B fragment.
// Address patterns used by the callers, for a tile in shared memory with row stride lds elements:
//   A fragment 16 x 16 at (m0, k0):        row m0 + l % 16,                 column k0 + (l / 16) * 8
//     -> registers a0 a1 a2 a3 in order
//   B fragments of two n8 tiles from [n][k] at (n0, k0):
//                                          row n0 + (l & 7) + (l >> 4) * 8, column k0 + ((l >> 3) & 1) * 8
//     -> {r0, r1} = tile n0, {r2, r3} = tile n0 + 8
//   B fragments of two n8 tiles from [k][n] (trans) at (k0, n0):
//                                          row k0 + (l & 7) + ((l >> 3) & 1) * 8, column n0 + (l >> 4) * 8
//     -> {r0, r1} = tile n0, {r2, r3} = tile n0 + 8
// Rows of 16-byte chunks whose byte stride is an odd multiple of 16 (e.g. 40 or 72 bf16 elements)
// make every 8-row ldmatrix phase hit 8 distinct bank quads: conflict-free without swizzling.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#if defined(STEP_SEG_CUDA_EMU)
#include "emu/ptx.h"
#endif

namespace step::cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "mma.cuh needs sm_80 or newer (cp.async, ldmatrix, bf16 mma.sync)"
#endif

#if !defined(STEP_SEG_CUDA_EMU)

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- cp.async -----------------------------------------------------------------------------------

// Copies 16 bytes global -> shared without going through registers (L2 only: .cg). When `valid` is
// false nothing is read and the 16 destination bytes are zero-filled (src-size 0); `src` must still
// be a valid address, callers pass the tensor's base.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem_dst)), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}

// Closes the group of cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `kPending` committed groups of this thread are still in flight. Other threads'
// copies become visible only after a following __syncthreads().
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- ldmatrix -----------------------------------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

// ---- mma ----------------------------------------------------------------------------------------

// d += A (16 x 16, bf16) * B (16 x 8, bf16), float32 accumulators; fragments as documented above.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#else  // the emulator build: the same wrappers over the host twins in emu/ptx.cpp

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  step_emu::ptx_cp_async_16(smem_dst, gmem_src, valid);
}
__device__ __forceinline__ void cp_async_commit() { step_emu::ptx_cp_async_commit(); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  step_emu::ptx_cp_async_wait(kPending);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  step_emu::ptx_ldmatrix_x4(r, smem_row, false);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  step_emu::ptx_ldmatrix_x4(r, smem_row, true);
}
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  step_emu::ptx_mma_bf16_16816(d, a, b0, b1);
}

#endif

}  // namespace step::cuda
