// emu.h: what a host compiler needs to compile native/cuda/*.cu as C++ for the emulator build
// (npm run build:emu, -DSTEP_SEG_CUDA_EMU=ON). CMake force-includes it before every .cu file of that
// build; the nvcc build never sees it. Kernel sources stay as they are: this header gives the CUDA
// qualifiers and built-ins a host meaning, and the launch helper (../launch.cuh) and the PTX wrappers
// (../mma.cuh) switch to the emulator's twins (simt.cpp, ptx.cpp).
//
// Model: a launch runs block after block (one at a time, process-wide); the threads of a block are
// fibers switched only inside the calls below (__syncthreads, warp collectives, PTX wrappers), so
// every such call is a real rendezvous. threadIdx and friends read the running fiber's coordinates.
// `__shared__` variables are function statics; the core poisons them (NaN bytes) for each block on
// first touch and checks every access to them for races (memcheck.cpp's access hooks).
// What this is not: a model of timing, of the GPU's memory model beyond barrier ordering, of register
// pressure or of what ptxas does.
#pragma once
#if !defined(STEP_SEG_CUDA_EMU) || defined(__CUDACC__)
#error "emu.h is for the host-compiled emulator build only"
#endif

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

// ---- qualifiers (host_defines.h leaves them empty for a host compiler) ------------------------------
#undef __shared__
#define __shared__ static
#undef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace step_emu {

// The running fiber's coordinates. `pure`: constant between two emulator calls, which is exactly
// where fibers switch, so the compiler may reuse a value but never across a barrier or collective.
__attribute__((pure)) uint3 thread_idx();
__attribute__((pure)) uint3 block_idx();
__attribute__((pure)) dim3 block_dim();
__attribute__((pure)) dim3 grid_dim();

// The block's dynamic shared memory (poisoned at block start, bounds- and race-checked).
void* dynamic_smem();

// Barriers and collectives; `site` names the call ("file:line") in reports.
void syncthreads(const char* site);
void syncwarp(unsigned mask, const char* site);
enum class ShflMode { kIdx, kUp, kDown, kXor };
uint64_t shfl(ShflMode mode, unsigned mask, uint64_t value, int operand, int width, const char* site);
enum class VoteMode { kAll, kAny, kBallot };
unsigned vote(VoteMode mode, unsigned mask, bool predicate, const char* site);

}  // namespace step_emu

#define threadIdx (::step_emu::thread_idx())
#define blockIdx (::step_emu::block_idx())
#define blockDim (::step_emu::block_dim())
#define gridDim (::step_emu::grid_dim())
#define warpSize 32

#define STEP_EMU_STR2(x) #x
#define STEP_EMU_STR(x) STEP_EMU_STR2(x)
#define STEP_EMU_SITE __FILE__ ":" STEP_EMU_STR(__LINE__)

#define __syncthreads() ::step_emu::syncthreads(STEP_EMU_SITE)
#define __syncwarp(...) ::step_emu::syncwarp(::step_emu::detail::mask_or_full(__VA_ARGS__), STEP_EMU_SITE)
#define __shfl_sync(m, v, l, ...) ::step_emu::detail::shfl_as(::step_emu::ShflMode::kIdx, m, v, l, STEP_EMU_SITE, ##__VA_ARGS__)
#define __shfl_up_sync(m, v, d, ...) ::step_emu::detail::shfl_as(::step_emu::ShflMode::kUp, m, v, d, STEP_EMU_SITE, ##__VA_ARGS__)
#define __shfl_down_sync(m, v, d, ...) \
  ::step_emu::detail::shfl_as(::step_emu::ShflMode::kDown, m, v, d, STEP_EMU_SITE, ##__VA_ARGS__)
#define __shfl_xor_sync(m, v, x, ...) ::step_emu::detail::shfl_as(::step_emu::ShflMode::kXor, m, v, x, STEP_EMU_SITE, ##__VA_ARGS__)
#define __all_sync(m, p) (::step_emu::vote(::step_emu::VoteMode::kAll, m, p, STEP_EMU_SITE) != 0)
#define __any_sync(m, p) (::step_emu::vote(::step_emu::VoteMode::kAny, m, p, STEP_EMU_SITE) != 0)
#define __ballot_sync(m, p) ::step_emu::vote(::step_emu::VoteMode::kBallot, m, p, STEP_EMU_SITE)

namespace step_emu::detail {

inline unsigned mask_or_full() { return 0xffffffffu; }
inline unsigned mask_or_full(unsigned m) { return m; }

// Any 4- or 8-byte trivially copyable value through the 64-bit exchange.
template <typename T>
inline T shfl_as(ShflMode mode, unsigned mask, T v, int operand, const char* site, int width = 32) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 4 or 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shfl(mode, mask, bits, operand, width, site);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Keeps the compiler from fusing an explicitly rounded operation into an FMA (the emulator build
// contracts a * b + c as nvcc does; the __*_rn intrinsics exist to forbid exactly that).
template <typename T>
inline T opaque(T v) {
  asm volatile("" : "+x"(v));
  return v;
}

}  // namespace step_emu::detail

// cuda_runtime.h declares the kernel-pointer overload for nvcc only.
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// ---- device math that host headers do not declare -------------------------------------------------
inline float __fadd_rn(float a, float b) { return step_emu::detail::opaque(a + b); }
inline float __fsub_rn(float a, float b) { return step_emu::detail::opaque(a - b); }
inline float __fmul_rn(float a, float b) { return step_emu::detail::opaque(step_emu::detail::opaque(a) * b); }
inline float __fdiv_rn(float a, float b) { return step_emu::detail::opaque(a / b); }
inline float __frcp_rn(float a) { return step_emu::detail::opaque(1.f / a); }
inline float __fsqrt_rn(float a) { return step_emu::detail::opaque(std::sqrt(a)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return step_emu::detail::opaque(a + b); }
inline double __dsub_rn(double a, double b) { return step_emu::detail::opaque(a - b); }
inline double __dmul_rn(double a, double b) { return step_emu::detail::opaque(step_emu::detail::opaque(a) * b); }
inline double __ddiv_rn(double a, double b) { return step_emu::detail::opaque(a / b); }
inline double __drcp_rn(double a) { return step_emu::detail::opaque(1.0 / a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.f / std::sqrt(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }
inline int __float_as_int(float a) { int i; std::memcpy(&i, &a, 4); return i; }
inline float __int_as_float(int i) { float a; std::memcpy(&a, &i, 4); return a; }
inline unsigned __float_as_uint(float a) { unsigned i; std::memcpy(&i, &a, 4); return i; }
inline float __uint_as_float(unsigned i) { float a; std::memcpy(&a, &i, 4); return a; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
// CUDA's integer min / max overloads, mixed types promoted as C++ does.
#include <type_traits>
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
