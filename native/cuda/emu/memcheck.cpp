// memcheck.cpp: the emulator's memory checks (see simt.cpp for the SIMT core they serve).
//
// The .cu sources of the emulator build are compiled with -fsanitize=thread, but no
// ThreadSanitizer runtime is linked: the __tsan_read*/__tsan_write* hooks it inserts before every
// load and store are defined here. While a kernel's own code runs they classify each address:
//   the running thread's stack              locals: not checked
//   the block's dynamic shared memory       bounds (the launch's byte count) and the race detector
//   the addon's writable static data        the kernels' __shared__ variables (function statics):
//                                           poisoned lazily on first touch in each block, race detector
//   anything else                           must lie inside one live cudaMalloc allocation
// and check natural alignment of aligned accesses (float2/float4/int4...). The race detector keeps,
// for every 2 bytes of shared memory, the last write and up to two reads, each with its thread, the
// block's barrier count and its warp's __syncwarp count: two accesses of different threads, at least
// one a write, with no barrier (or, within a warp, no __syncwarp) between them are a race, as
// compute-sanitizer's racecheck reports them. Warp collectives (shuffles, ldmatrix, mma) do not order
// memory, as on the GPU.
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "emu_core.h"
#include "simt.h"

namespace step_emu {
namespace {

constexpr uint32_t kNoThread = 0xffffffffu;

struct Access {
  uint32_t tid = kNoThread, gen = 0, wgen = 0;
};
struct ShadowCell {  // 2 bytes of shared memory
  uint32_t stamp = 0;
  Access w, r1, r2;
};

std::vector<ShadowCell> g_dyn_shadow(kArenaBytes / 2);
std::vector<ShadowCell> g_static_shadow;                     // 2-byte units of the writable data
uintptr_t g_static_lo = 0, g_static_hi = 0;                  // the addon's writable data
std::map<uintptr_t, size_t> g_allocs;                        // live device allocations
uintptr_t g_last_lo = 1, g_last_hi = 0;                      // the last allocation a check hit

}  // namespace

// The writable PT_LOAD segments of this shared object hold the kernels' __shared__ statics.
void find_static_range() {
  if (g_static_hi) return;
  Dl_info info{};
  dladdr(reinterpret_cast<void*>(&find_static_range), &info);
  struct Ctx {
    const void* base;
    uintptr_t lo, hi;
  } ctx{info.dli_fbase, UINTPTR_MAX, 0};
  dl_iterate_phdr(
      [](dl_phdr_info* i, size_t, void* p) {
        Ctx& c = *static_cast<Ctx*>(p);
        for (int k = 0; k < i->dlpi_phnum; ++k) {
          const ElfW(Phdr)& ph = i->dlpi_phdr[k];
          if (ph.p_type != PT_LOAD) continue;
          const uintptr_t lo = i->dlpi_addr + ph.p_vaddr;
          if (ph.p_offset == 0 && reinterpret_cast<const void*>(lo) != c.base) break;  // another object
          if (ph.p_flags & PF_W) c.lo = std::min(c.lo, lo), c.hi = std::max<uintptr_t>(c.hi, lo + ph.p_memsz);
        }
        return 0;
      },
      &ctx);
  g_static_lo = ctx.lo & ~uintptr_t(1), g_static_hi = ctx.hi > ctx.lo ? ctx.hi : 1;
  g_static_shadow.assign((g_static_hi - g_static_lo) / 2 + 1, ShadowCell{});
}

namespace {

// ---- race detector --------------------------------------------------------------------------------

bool ordered(const Access& a, const Fiber& f) {
  if (a.tid == kNoThread || a.tid == uint32_t(f.linear) || a.gen != g_block.gen) return true;
  const uint32_t w = a.tid / 32;
  return int(w) == f.warp && a.wgen != g_block.wgen[w];
}

// Where a shadow cell's bytes are, for reports only.
std::string shared_place(uintptr_t unit_addr) {
  const uintptr_t dyn = reinterpret_cast<uintptr_t>(g_block.dyn);
  if (unit_addr >= dyn && unit_addr < dyn + kArenaBytes) return "dynamic shared offset " + std::to_string(unit_addr - dyn);
  return "static __shared__ address " + hex(unit_addr);
}

[[noreturn]] void race(const char* kind, const Access& other, const Fiber& f, const char* what, uintptr_t at) {
  const Fiber& o = g_block.fibers[other.tid];
  fault(cudaErrorLaunchFailure, std::string("shared-memory race (") + kind + ") at " + shared_place(at) + ": " + what + " by thread " +
                                    dim(f.tid) + " and an access by thread " + dim(o.tid) +
                                    " with no __syncthreads (or __syncwarp) between them");
}

void shadow_access(ShadowCell& c, bool write, const Fiber& f, const char* what, uintptr_t at) {
  if (c.stamp != g_block.stamp) c = ShadowCell{}, c.stamp = g_block.stamp;
  const Access me{uint32_t(f.linear), g_block.gen, g_block.wgen[f.warp]};
  if (!ordered(c.w, f)) race(write ? "write after write" : "read after write", c.w, f, what, at);
  if (write) {
    if (!ordered(c.r1, f)) race("write after read", c.r1, f, what, at);
    if (!ordered(c.r2, f)) race("write after read", c.r2, f, what, at);
    c.w = me, c.r1 = c.r2 = Access{};
  } else if (ordered(c.r1, f)) {
    c.r1 = me;
  } else if (ordered(c.r2, f)) {
    c.r2 = me;
  }
}

// ---- the access hooks' slow path -----------------------------------------------------------------

void check_access(const void* p, size_t bytes, bool write, bool aligned) {
  const Fiber& f = *g_block.cur;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (aligned && bytes > 1 && a % bytes)
    fault(cudaErrorMisalignedAddress, std::string("misaligned ") + std::to_string(bytes) + "-byte " +
                                          (write ? "store" : "load") + " at " + hex(a));
  const uintptr_t dyn = reinterpret_cast<uintptr_t>(g_block.dyn);
  const bool in_static = a >= g_static_lo && a < g_static_hi;
  if ((a >= dyn && a < dyn + kArenaBytes) || in_static) {
    access_shared(p, bytes, write, f, write ? "store" : "load");
    return;
  }
  if (a >= g_last_lo && a + bytes <= g_last_hi) return;
  if (check_device_range(p, bytes, nullptr)) return;
  for (const Fiber& o : g_block.fibers)
    if (a >= uintptr_t(o.stack_lo) && a < uintptr_t(o.stack_hi))
      fault(cudaErrorIllegalAddress, std::string(write ? "store" : "load") + " to the local memory of thread " + dim(o.tid));
  access_global(p, bytes, write ? "store" : "load");
}

inline void on_access(const void* p, size_t bytes, bool write, bool aligned) {
  if (!g_active.load(std::memory_order_acquire)) return;
  if (!pthread_equal(pthread_self(), g_exec_thread)) return;  // host code on another thread: not ours to read
  Fiber* f = g_block.cur;
  if (!f || !f->checking) return;
  const uint8_t* frame = static_cast<const uint8_t*>(__builtin_frame_address(0));
  if (frame < f->stack_lo || frame >= f->stack_hi) return;  // not on the fiber's stack: not kernel code
  const uint8_t* a = static_cast<const uint8_t*>(p);
  if (a >= f->stack_lo && a + bytes <= f->stack_hi) return;  // the thread's own locals
  check_access(p, bytes, write, aligned);
}

}  // namespace

void access_shared(const void* p, size_t bytes, bool write, const Fiber& who, const char* what) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), dyn = reinterpret_cast<uintptr_t>(g_block.dyn);
  if (a >= dyn && a < dyn + kArenaBytes) {
    const uintptr_t off = a - dyn;
    if (off + bytes > g_block.dyn_bytes)
      fault(cudaErrorIllegalAddress, std::string(what) + " of " + std::to_string(bytes) + " bytes at dynamic shared offset " +
                                         std::to_string(off) + ", past the " + std::to_string(g_block.dyn_bytes) +
                                         " bytes the launch gave");
    for (uintptr_t u = off / 2; u <= (off + bytes - 1) / 2; ++u) shadow_access(g_dyn_shadow[u], write, who, what, dyn + u * 2);
    return;
  }
  if (a >= g_static_lo && a + bytes <= g_static_hi) {
    for (uintptr_t u = a / 2; u <= (a + bytes - 1) / 2; ++u) {
      ShadowCell& c = g_static_shadow[u - g_static_lo / 2];
      if (c.stamp != g_block.stamp) std::memset(reinterpret_cast<void*>(u * 2), kPoison, 2);  // first touch
      shadow_access(c, write, who, what, u * 2);
    }
    return;
  }
  fault(cudaErrorIllegalAddress, std::string(what) + " at " + hex(a) + ", which is not shared memory");
}

void access_global(const void* p, size_t bytes, const char* what) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a >= g_last_lo && a + bytes <= g_last_hi) return;
  std::string why;
  if (!check_device_range(p, bytes, &why))
    fault(cudaErrorIllegalAddress, std::string(what) + " of " + std::to_string(bytes) + " bytes: " + why);
}

void begin_kernel_body() { current_fiber().checking = true; }

void register_allocation(const void* p, size_t bytes) { g_allocs[reinterpret_cast<uintptr_t>(p)] = bytes; }

void unregister_allocation(const void* p) {
  g_allocs.erase(reinterpret_cast<uintptr_t>(p));
  g_last_lo = 1, g_last_hi = 0;
}

bool check_device_range(const void* p, size_t bytes, std::string* why) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it != g_allocs.begin()) {
    --it;
    const uintptr_t lo = it->first, hi = lo + it->second;
    if (a + bytes <= hi && a + bytes >= a) {
      g_last_lo = lo, g_last_hi = hi;
      return true;
    }
    if (a < hi) {
      if (why) *why = "address " + hex(a) + " runs " + std::to_string(a + bytes - hi) + " bytes past the end of a " +
                      std::to_string(it->second) + "-byte allocation at " + hex(lo);
      return false;
    }
    if (why && a < hi + 4096) {
      *why = "address " + hex(a) + " is " + std::to_string(a - hi) + " bytes past the end of a " +
             std::to_string(it->second) + "-byte allocation at " + hex(lo);
      return false;
    }
  }
  if (why) *why = "address " + hex(a) + " is not inside any live device allocation (host memory, freed, or never allocated)";
  return false;
}

}  // namespace step_emu

// ---- the ThreadSanitizer instrumentation's entry points -------------------------------------------------
// Defined here instead of linking libtsan: every load and store of the emulator build's kernel code
// comes through them (see the header). They are hidden with the rest of the addon's symbols.
extern "C" {
#define STEP_EMU_HOOKS(n)                                                                                     \
  void __tsan_read##n(void* p) { step_emu::on_access(p, n, false, true); }                                   \
  void __tsan_write##n(void* p) { step_emu::on_access(p, n, true, true); }                                   \
  void __tsan_unaligned_read##n(void* p) { step_emu::on_access(p, n, false, false); }                        \
  void __tsan_unaligned_write##n(void* p) { step_emu::on_access(p, n, true, false); }
STEP_EMU_HOOKS(1)
STEP_EMU_HOOKS(2)
STEP_EMU_HOOKS(4)
STEP_EMU_HOOKS(8)
STEP_EMU_HOOKS(16)
#undef STEP_EMU_HOOKS
void __tsan_read_range(void* p, unsigned long n) { step_emu::on_access(p, n, false, false); }
void __tsan_write_range(void* p, unsigned long n) { step_emu::on_access(p, n, true, false); }
// Atomics of the host code in the instrumented files (std::atomic, shared_ptr counts): performed as
// sequentially consistent operations, which is at least as strong as any order asked for.
#define STEP_EMU_ATOMICS(bits)                                                                                   \
  using a##bits = uint##bits##_t;                                                                                \
  a##bits __tsan_atomic##bits##_load(const volatile a##bits* p, int) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); } \
  void __tsan_atomic##bits##_store(volatile a##bits* p, a##bits v, int) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); } \
  a##bits __tsan_atomic##bits##_exchange(volatile a##bits* p, a##bits v, int) {                                  \
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);                                                          \
  }                                                                                                              \
  a##bits __tsan_atomic##bits##_fetch_add(volatile a##bits* p, a##bits v, int) {                                 \
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  a##bits __tsan_atomic##bits##_fetch_sub(volatile a##bits* p, a##bits v, int) {                                 \
    return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  a##bits __tsan_atomic##bits##_fetch_and(volatile a##bits* p, a##bits v, int) {                                 \
    return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  a##bits __tsan_atomic##bits##_fetch_or(volatile a##bits* p, a##bits v, int) {                                  \
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  a##bits __tsan_atomic##bits##_fetch_xor(volatile a##bits* p, a##bits v, int) {                                 \
    return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile a##bits* p, a##bits* expected, a##bits v, int, int) { \
    return __atomic_compare_exchange_n(p, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
  }                                                                                                              \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile a##bits* p, a##bits* expected, a##bits v, int, int) { \
    return __atomic_compare_exchange_n(p, expected, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
  }                                                                                                              \
  a##bits __tsan_atomic##bits##_compare_exchange_val(volatile a##bits* p, a##bits expected, a##bits v, int, int) { \
    __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
    return expected;                                                                                             \
  }
STEP_EMU_ATOMICS(8)
STEP_EMU_ATOMICS(16)
STEP_EMU_ATOMICS(32)
STEP_EMU_ATOMICS(64)
#undef STEP_EMU_ATOMICS
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}
