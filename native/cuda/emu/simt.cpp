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
// Memory checks (memcheck.cpp): every load and store of the kernel's own code is checked (device
// allocations, shared-memory bounds and races, alignment) through the ThreadSanitizer hooks.
#include "simt.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "emu.h"
#include "emu_core.h"

namespace step_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;

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

}  // namespace

Block g_block;
std::atomic<bool> g_active{false};   // a launch is running (read by the hooks of every host thread)
pthread_t g_exec_thread{};           // the host thread running it (written before g_active is set)

std::string hex(uintptr_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string dim(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

namespace {

uint8_t* arena() {
  static uint8_t* a = static_cast<uint8_t*>(std::aligned_alloc(128, kArenaBytes));
  return a;
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
