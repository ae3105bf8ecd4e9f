// simt.cpp: the emulator's SIMT core. Runs a kernel launch on the CPU, block after block, the threads
// of a block as cooperative fibers on one host thread, and checks what the kernel does.
//
// Fibers: each emulated thread has its own stack (mmap'ed, a guard page below) and runs until it
// reaches a barrier or a warp collective, where it switches back to the block's scheduler (a
// hand-written x86-64 context switch; ucontext elsewhere). __syncthreads releases when every thread
// of the block has arrived at the same call site; collectives complete when every lane of their mask
// has arrived at the same kind of collective. When no fiber can run and some have not finished (a
// barrier that exited threads never reach, a lane missing from a collective), the launch fails with a
// report naming the kernel, the block, the threads and the call sites, instead of hanging.
//
// Memory checks: the .cu sources of the emulator build are compiled with -fsanitize=thread, but no
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
#include "simt.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "emu.h"
#include "emu_core.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace step_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr size_t kMaxDynamicSmem = 232448;  // sm_90: 227 KiB per block with the opt-in
constexpr size_t kArenaBytes = kMaxDynamicSmem + 4096;
constexpr uint32_t kNoThread = 0xffffffffu;

// ---- context switch ------------------------------------------------------------------------------

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the
// stack pointer in *save and resumes the context whose stack pointer is `load` (System V ABI).
extern "C" void step_emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl step_emu_switch
  .hidden step_emu_switch
  .type step_emu_switch, @function
step_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size step_emu_switch, .-step_emu_switch
)");
#endif

// ---- state of the block being run (one at a time: the runtime serialises launches) ---------------

struct Access {
  uint32_t tid = kNoThread, gen = 0, wgen = 0;
};
struct ShadowCell {  // 2 bytes of shared memory
  uint32_t stamp = 0;
  Access w, r1, r2;
};

struct Pending {  // an open collective; `in` is written lane by lane, never zeroed
  CollectiveKind kind;
  unsigned mask, arrived;
  const char* site;
  CollectiveComplete complete;
  LaneInput in[32];
};
constexpr int kMaxOpen = 8;  // open collectives of one warp (disjoint masks) at a time
struct WarpSlots {
  int open;
  Pending slot[kMaxOpen];
};

struct Block {
  const KernelLaunch* launch = nullptr;
  uint3 idx{};
  int threads = 0;
  std::vector<Fiber> fibers;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_ctx;
  std::vector<ucontext_t> ctx;
#endif
  int at_barrier = 0;
  int exited = 0;                 // threads that have finished
  uint32_t gen = 0;               // barriers passed by the block
  std::vector<uint32_t> wgen;     // __syncwarp rendezvous passed, per warp
  std::unique_ptr<WarpSlots[]> warps;  // open collectives, per warp (default-initialised: no zeroing)
  int warp_count = 0;
  std::vector<int> ready;          // ring of runnable fibers (each at most once)
  size_t ready_head = 0, ready_size = 0;
  uint8_t* dyn = nullptr;
  size_t dyn_bytes = 0;
  uint32_t stamp = 0;             // the block's number, for lazy shadow resets
  bool faulted = false;
  cudaError_t fault_code = cudaSuccess;
  std::string fault_what;
};

Block g_block;
std::atomic<bool> g_active{false};   // a launch is running (read by the hooks of every host thread)
pthread_t g_exec_thread{};           // the host thread running it (written before g_active is set)
std::vector<ShadowCell> g_dyn_shadow(kArenaBytes / 2);
std::vector<ShadowCell> g_static_shadow;                     // 2-byte units of the writable data
uintptr_t g_static_lo = 0, g_static_hi = 0;                  // the addon's writable data
std::map<uintptr_t, size_t> g_allocs;                        // live device allocations
uintptr_t g_last_lo = 1, g_last_hi = 0;                      // the last allocation a check hit

uint8_t* arena() {
  static uint8_t* a = static_cast<uint8_t*>(std::aligned_alloc(128, kArenaBytes));
  return a;
}

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

std::string hex(uintptr_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string dim(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

std::string where(const Fiber* f) {
  std::string s = "kernel " + g_block.launch->name + ", block " + dim(g_block.idx);
  if (f) s += ", thread " + dim(f->tid);
  return s;
}

void make_ready(Fiber& f) {
  Block& b = g_block;
  f.state = Fiber::State::kReady;
  b.ready[(b.ready_head + b.ready_size++) % b.ready.size()] = f.linear;
}

Fiber* next_ready() {
  Block& b = g_block;
  if (!b.ready_size) return nullptr;
  Fiber* f = &b.fibers[b.ready[b.ready_head]];
  b.ready_head = (b.ready_head + 1) % b.ready.size(), --b.ready_size;
  return f;
}

void switch_to_scheduler(Fiber& f) {
#if defined(__x86_64__)
  step_emu_switch(&f.sp, g_block.sched_sp);
#else
  swapcontext(&g_block.ctx[f.linear], &g_block.sched_ctx);
#endif
}

// The running fiber `f` cannot go on (it waits, or has finished): straight to the next runnable
// fiber, or back to the scheduler when there is none (the block is done, or stuck).
void yield_from(Fiber& f) {
  Fiber* n = next_ready();
  if (!n) return switch_to_scheduler(f);
  g_block.cur = n;
#if defined(__x86_64__)
  step_emu_switch(&f.sp, n->sp);
#else
  swapcontext(&g_block.ctx[f.linear], &g_block.ctx[n->linear]);
#endif
}

void run_fiber(Fiber& f) {
  g_block.cur = &f;
#if defined(__x86_64__)
  step_emu_switch(&g_block.sched_sp, f.sp);
#else
  swapcontext(&g_block.sched_ctx, &g_block.ctx[f.linear]);
#endif
  g_block.cur = nullptr;
}

void land(const std::vector<CpAsyncCopy>& group, const Fiber& f) {
  for (const CpAsyncCopy& c : group) {
    access_shared(c.dst, 16, true, f, "cp.async (landing)");
    if (c.valid) std::memcpy(c.dst, c.src, 16);
    else std::memset(c.dst, 0, 16);
  }
}

void fiber_main() {
  Fiber& f = *g_block.cur;
  try {
    g_block.launch->run_thread();
  } catch (const std::exception& e) {
    fault(cudaErrorLaunchFailure, std::string("host exception in the emulated thread: ") + e.what());
  }
  f.checking = false;
  for (const auto& g : f.committed) land(g, f);
  land(f.open_group, f);
  f.committed.clear(), f.open_group.clear();
  f.state = Fiber::State::kDone;
  ++g_block.exited;
  yield_from(f);
  __builtin_trap();  // a finished fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_entry_ucontext() { fiber_main(); }
#endif

std::vector<uint8_t*>& stacks() {
  static std::vector<uint8_t*> s;
  return s;
}

void prepare_fiber(Fiber& f, int linear) {
  auto& pool = stacks();
  while (int(pool.size()) <= linear) {
    void* m = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    mprotect(m, kGuardBytes, PROT_NONE);  // a fiber that overflows its stack faults instead of corrupting
    pool.push_back(static_cast<uint8_t*>(m) + kGuardBytes);
  }
  f.stack_lo = pool[linear];
  f.stack_hi = f.stack_lo + kStackBytes;
#if defined(__x86_64__)
  // Initial frame, consumed by step_emu_switch: MXCSR / FPU control word, six registers, then the
  // "return address" fiber_main, entered with the stack aligned as after a call.
  uint64_t* top = reinterpret_cast<uint64_t*>(f.stack_hi);
  *--top = 0;                                            // fiber_main's own return address: none
  *--top = reinterpret_cast<uint64_t>(&fiber_main);
  for (int r = 0; r < 6; ++r) *--top = 0;
  *--top = 0x037F00001F80ull;                            // MXCSR 0x1F80, x87 control word 0x037F
  f.sp = top;
#else
  ucontext_t& c = g_block.ctx[linear];
  getcontext(&c);
  c.uc_stack.ss_sp = f.stack_lo;
  c.uc_stack.ss_size = kStackBytes;
  c.uc_link = nullptr;
  makecontext(&c, fiber_entry_ucontext, 0);
#endif
}

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

// ---- deadlock report ---------------------------------------------------------------------------------

[[noreturn]] void report_stuck() {
  Block& b = g_block;
  std::string msg;
  int done = 0, barrier = 0;
  const char* barrier_site = nullptr;
  for (const Fiber& f : b.fibers) {
    if (f.state == Fiber::State::kDone) ++done;
    if (f.state == Fiber::State::kBarrier) ++barrier, barrier_site = f.site;
  }
  for (int w = 0; w < b.warp_count && msg.empty(); ++w)
    for (int i = 0; i < b.warps[w].open; ++i) {
      const Pending& p = b.warps[w].slot[i];
      const unsigned missing = p.mask & ~p.arrived;
      const int lane = __builtin_ctz(missing);
      const Fiber& m = b.fibers[w * 32 + lane];
      msg = "warp " + std::to_string(w) + ": the collective at " + p.site + " (mask " + hex(p.mask) + ") waits for lane " +
            std::to_string(lane) + ", which " +
            (m.state == Fiber::State::kDone ? std::string("has exited") : std::string("waits at ") + (m.site ? m.site : "?"));
      break;
    }
  if (msg.empty())
    msg = "__syncthreads at " + std::string(barrier_site ? barrier_site : "?") + " reached by " + std::to_string(barrier) +
          " of " + std::to_string(b.threads) + " threads; " + std::to_string(done) + " exited without reaching it";
  b.cur = nullptr;
  fault(cudaErrorLaunchFailure, "deadlock: " + msg);
}

void run_block(uint3 idx) {
  Block& b = g_block;
  b.idx = idx;
  b.at_barrier = 0, b.gen = 0, b.exited = 0;
  ++b.stamp;
  std::fill(b.wgen.begin(), b.wgen.end(), 0u);
  for (int w = 0; w < b.warp_count; ++w) b.warps[w].open = 0;
  b.ready_head = 0, b.ready_size = 0;
  std::memset(b.dyn, kPoison, b.dyn_bytes);
  for (int i = 0; i < b.threads; ++i) {
    Fiber& f = b.fibers[i];
    f.state = Fiber::State::kReady, f.checking = false, f.site = nullptr;
    f.open_group.clear(), f.committed.clear();
    prepare_fiber(f, i);
  }
  for (int i = 0; i < b.threads; ++i) make_ready(b.fibers[i]);
  for (;;) {
    if (Fiber* f = next_ready()) run_fiber(*f);  // returns when nothing is runnable (or on a fault)
    if (b.faulted || b.exited == b.threads) return;
    if (!b.ready_size) report_stuck();
  }
}

}  // namespace

// ---- the core's public surface ---------------------------------------------------------------------

Fiber& current_fiber() {
  if (!g_block.cur) fault(cudaErrorLaunchFailure, "a device intrinsic was called outside a kernel");
  return *g_block.cur;
}

Fiber& fiber_of_lane(int warp, int lane) { return g_block.fibers[warp * 32 + lane]; }

void fault(cudaError_t code, const std::string& what) {
  Block& b = g_block;
  if (!b.faulted) {
    b.faulted = true, b.fault_code = code;
    b.fault_what = where(b.cur) + ": " + what;
  }
  if (b.cur) {
    Fiber& f = *b.cur;
    f.checking = false;
    switch_to_scheduler(f);
  }
  // Outside a fiber (a deadlock found by the scheduler): return to execute_launch through an exception.
  throw std::runtime_error(b.fault_what);
}

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

cudaError_t validate_launch(const KernelLaunch& l, std::string* what) {
  const dim3 g = l.grid, b = l.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  auto bad = [&](cudaError_t e, const std::string& s) {
    *what = "launch of " + l.name + ": " + s;
    return e;
  };
  if (!b.x || !b.y || !b.z || !g.x || !g.y || !g.z) return bad(cudaErrorInvalidConfiguration, "an empty grid or block");
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
    return bad(cudaErrorInvalidConfiguration, "block " + dim({b.x, b.y, b.z}) + " is over 1024 threads or (1024,1024,64)");
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    return bad(cudaErrorInvalidConfiguration, "grid " + dim({g.x, g.y, g.z}) + " is over (2^31-1,65535,65535)");
  const size_t limit = func_max_dynamic_smem(l.func);
  if (l.dynamic_smem > limit)
    return bad(cudaErrorInvalidValue, std::to_string(l.dynamic_smem) + " bytes of dynamic shared memory, over the kernel's " +
                                          std::to_string(limit) + " (raise it with cudaFuncSetAttribute, at most 232448)");
  return cudaSuccess;
}

cudaError_t execute_launch(const KernelLaunch& l, std::string* what) {
  find_static_range();
  Block& b = g_block;
  b.launch = &l;
  b.threads = int(l.block.x * l.block.y * l.block.z);
  b.fibers.assign(b.threads, Fiber{});
#if !defined(__x86_64__)
  b.ctx.resize(b.threads);
#endif
  const int warps = (b.threads + 31) / 32;
  b.wgen.assign(warps, 0u);
  b.warps.reset(new WarpSlots[warps]);
  b.warp_count = warps;
  b.ready.assign(b.threads, 0);
  for (int i = 0; i < b.threads; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i, f.lane = i % 32, f.warp = i / 32;
    f.tid = {unsigned(i % l.block.x), unsigned(i / l.block.x % l.block.y), unsigned(i / (l.block.x * l.block.y))};
  }
  b.dyn = arena(), b.dyn_bytes = l.dynamic_smem;
  b.faulted = false, b.fault_what.clear();
  g_exec_thread = pthread_self();
  g_active.store(true, std::memory_order_release);
  try {
    for (unsigned z = 0; z < l.grid.z && !b.faulted; ++z)
      for (unsigned y = 0; y < l.grid.y && !b.faulted; ++y)
        for (unsigned x = 0; x < l.grid.x && !b.faulted; ++x) run_block({x, y, z});
  } catch (const std::runtime_error&) {
    // report_stuck's fault, already recorded
  }
  g_active.store(false, std::memory_order_relaxed);
  b.cur = nullptr;
  b.launch = nullptr;
  if (!b.faulted) return cudaSuccess;
  *what = b.fault_what;
  return b.fault_code;
}

// ---- built-ins (emu.h) -------------------------------------------------------------------------------

uint3 thread_idx() { return current_fiber().tid; }
uint3 block_idx() { return g_block.idx; }
dim3 block_dim() { return g_block.launch->block; }
dim3 grid_dim() { return g_block.launch->grid; }
void* dynamic_smem() { return g_block.dyn; }

void syncthreads(const char* site) {
  Block& b = g_block;
  Fiber& f = current_fiber();
  f.state = Fiber::State::kBarrier, f.site = site;
  if (++b.at_barrier < b.threads) {
    yield_from(f);
    return;
  }
  for (const Fiber& o : b.fibers)
    if (std::strcmp(o.site, site) != 0)
      fault(cudaErrorLaunchFailure, "divergent __syncthreads: thread " + dim(o.tid) + " waits at " + o.site +
                                        ", others at " + site);
  b.at_barrier = 0, ++b.gen;
  f.state = Fiber::State::kReady;  // goes on running
  for (Fiber& o : b.fibers)
    if (&o != &f) make_ready(o);
}

void warp_collective(CollectiveKind kind, unsigned mask, const LaneInput& in, const char* site,
                     CollectiveComplete complete) {
  Block& b = g_block;
  Fiber& f = current_fiber();
  const unsigned bit = 1u << f.lane;
  const int lanes = std::min(32, b.threads - f.warp * 32);
  const unsigned exist = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  if (!(mask & bit))
    fault(cudaErrorLaunchFailure, std::string("the collective at ") + site + " has mask " + hex(mask) +
                                      ", which leaves out the calling lane " + std::to_string(f.lane));
  if (mask & ~exist)
    fault(cudaErrorLaunchFailure, std::string("the collective at ") + site + " has mask " + hex(mask) + " but warp " +
                                      std::to_string(f.warp) + " has only " + std::to_string(lanes) + " threads");
  for (int l = 0; l < 32 && b.exited; ++l)
    if ((mask >> l & 1) && fiber_of_lane(f.warp, l).state == Fiber::State::kDone)
      fault(cudaErrorLaunchFailure, std::string("the collective at ") + site + " (mask " + hex(mask) + ") names lane " +
                                        std::to_string(l) + ", which has exited");
  WarpSlots& ws = b.warps[f.warp];
  Pending* p = nullptr;
  for (int i = 0; i < ws.open; ++i) {
    Pending& q = ws.slot[i];
    if (!(q.mask & mask)) continue;
    if (q.mask != mask || q.kind != kind)
      fault(cudaErrorLaunchFailure, std::string("lanes of warp ") + std::to_string(f.warp) + " meet at different collectives: " +
                                        q.site + " (mask " + hex(q.mask) + ") and " + site + " (mask " + hex(mask) + ")");
    p = &q;
  }
  if (!p) {
    if (ws.open == kMaxOpen) fault(cudaErrorLaunchFailure, "more than 8 partial-warp collectives open in one warp");
    p = &ws.slot[ws.open++];
    p->kind = kind, p->mask = mask, p->arrived = 0, p->site = site, p->complete = complete;
  }
  p->in[f.lane] = in;
  p->arrived |= bit;
  if (p->arrived != mask) {
    f.state = Fiber::State::kCollective, f.site = site;
    yield_from(f);
    return;
  }
  p->complete(p->kind, p->mask, p->in, f.warp);  // may fault: p stays valid until the block ends
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1) && l != f.lane) make_ready(fiber_of_lane(f.warp, l));
  *p = ws.slot[--ws.open];  // close the slot: the last open one moves into it
}

namespace {

void complete_shfl(CollectiveKind kind, unsigned mask, const LaneInput* in, int warp) {
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    const int operand = int(in[l].v[1]), width = int(in[l].v[2]);
    const int seg = l & ~(width - 1);
    int src = l;
    bool valid = true;
    switch (kind) {
      case CollectiveKind::kShflIdx: src = seg + (operand & (width - 1)); break;
      case CollectiveKind::kShflUp: src = l - operand, valid = src >= seg; break;
      case CollectiveKind::kShflDown: src = l + operand, valid = src < seg + width; break;
      default: src = l ^ operand, valid = src >= seg && src < seg + width; break;
    }
    if (valid && !(mask >> src & 1))
      fault(cudaErrorLaunchFailure, "lane " + std::to_string(l) + " shuffles from lane " + std::to_string(src) +
                                        ", which is not in the mask " + hex(mask));
    fiber_of_lane(warp, l).result[0] = valid ? in[src].v[0] : in[l].v[0];
  }
}

void complete_vote(CollectiveKind, unsigned mask, const LaneInput* in, int warp) {
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1) && in[l].v[0]) ballot |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    const auto mode = VoteMode(in[l].v[1]);
    fiber_of_lane(warp, l).result[0] =
        mode == VoteMode::kBallot ? ballot : mode == VoteMode::kAll ? ballot == mask : ballot != 0;
  }
}

void complete_syncwarp(CollectiveKind, unsigned, const LaneInput*, int warp) { ++g_block.wgen[warp]; }

}  // namespace

uint64_t shfl(ShflMode mode, unsigned mask, uint64_t value, int operand, int width, const char* site) {
  if (width < 1 || width > 32 || (width & (width - 1)))
    fault(cudaErrorLaunchFailure, std::string("shuffle at ") + site + " with width " + std::to_string(width) +
                                      " (a power of two up to 32)");
  static constexpr CollectiveKind kinds[] = {CollectiveKind::kShflIdx, CollectiveKind::kShflUp, CollectiveKind::kShflDown,
                                             CollectiveKind::kShflXor};
  LaneInput in{{value, uint64_t(uint32_t(operand)), uint64_t(width), 0, 0, 0}};
  warp_collective(kinds[int(mode)], mask, in, site, complete_shfl);
  return current_fiber().result[0];
}

unsigned vote(VoteMode mode, unsigned mask, bool predicate, const char* site) {
  LaneInput in{{uint64_t(predicate), uint64_t(mode), 0, 0, 0, 0}};
  warp_collective(CollectiveKind::kVote, mask, in, site, complete_vote);
  return unsigned(current_fiber().result[0]);
}

void syncwarp(unsigned mask, const char* site) {
  warp_collective(CollectiveKind::kSyncwarp, mask, LaneInput{}, site, complete_syncwarp);
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
