// selftest.h: the emulator's own test kernels (selftest.cu), plain C++ for the addon's emuOps.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace step::cuda {

// One warp's mma.sync.m16n8k16 bf16: a (32, 4) and b (32, 2) registers, c and d (32, 4) float32.
void selftest_mma(const uint32_t* a, const uint32_t* b, const float* c, float* d);
// One warp's ldmatrix.x4 (or .trans) over 1024 b16 of shared memory; addr (32) element offsets; out (32, 4).
void selftest_ldmatrix(const uint16_t* smem, const int32_t* addr, bool trans, uint32_t* out);

// CUDA graph capture on the emulated runtime: a legal capture recorded and replayed, then what a
// capture forbids; one line per step, "<step>: <cudaError name>" (or the value read back).
std::vector<std::string> selftest_capture();

// The planted bugs (selftest.cu): each runs its kernel on x, the correct variant or the buggy one,
// and returns the output or throws the emulator's fault.
std::vector<std::string> planted_bug_names();
std::vector<float> run_planted(const std::string& name, bool bug, const std::vector<float>& x);

}  // namespace step::cuda

namespace step_emu {
// The emulated runtime's test hooks (emu_core.h), without CUDA headers.
void set_memory_capacity(size_t bytes);
void reset_after_fault();
std::string last_fault();
}  // namespace step_emu
