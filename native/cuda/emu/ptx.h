// ptx.h: the emulator's twins of mma.cuh's PTX wrappers (defined in ptx.cpp; see there for the
// semantics). mma.cuh calls these instead of inline asm in the emulator build.
#pragma once
#include <cstdint>

namespace step_emu {

void ptx_cp_async_16(void* smem_dst, const void* gmem_src, bool valid);
void ptx_cp_async_commit();
void ptx_cp_async_wait(int pending);
void ptx_ldmatrix_x4(uint32_t (&r)[4], const void* smem_row, bool trans);
void ptx_mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

}  // namespace step_emu
