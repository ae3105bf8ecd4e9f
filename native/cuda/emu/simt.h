// simt.h: the SIMT core's internals shared by simt.cpp (fibers, barriers, collectives), memcheck.cpp
// (the memory checks and the race detector) and ptx.cpp (the PTX instruction twins, which are warp
// collectives and shared-memory accesses of their own).
#pragma once
#include <cuda_runtime.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "emu_core.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace step_emu {

struct CpAsyncCopy {
  uint8_t* dst;
  const uint8_t* src;
  bool valid;
};

// One emulated thread.
struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  uint8_t* stack_lo = nullptr;
  uint8_t* stack_hi = nullptr;
  uint3 tid{};
  int linear = 0, lane = 0, warp = 0;
  enum class State : uint8_t { kReady, kBarrier, kCollective, kDone } state = State::kReady;
  bool checking = false;        // the kernel's own code is running: its accesses are checked
  const char* site = nullptr;   // where it waits
  uint64_t result[4] = {};      // a collective's result for this lane
  std::vector<CpAsyncCopy> open_group;               // cp.async issued since the last commit
  std::deque<std::vector<CpAsyncCopy>> committed;    // committed groups, oldest first
};

// The fiber running now (nullptr outside a kernel).
Fiber& current_fiber();
Fiber& fiber_of_lane(int warp, int lane);

// Stops the kernel with a fault: records the first one, then (inside a fiber) never returns.
[[noreturn]] void fault(cudaError_t code, const std::string& what);

// Checks an access of `bytes` at `p` by fiber `who` that must fall in shared memory (dynamic or
// static), with the race detector; `write` marks the bytes written. Faults on failure.
void access_shared(const void* p, size_t bytes, bool write, const Fiber& who, const char* what);
// Checks an access that must fall in one live device allocation. Faults on failure.
void access_global(const void* p, size_t bytes, const char* what);

// A warp collective: every lane of `mask` (which must include the caller) arrives with `in`; when the
// last arrives, `complete` computes each lane's `result` from all inputs. Lanes that meet at different
// kinds of collective, masks naming missing or exited lanes, and lanes that never arrive are faults.
struct LaneInput {
  uint64_t v[6];
};
enum class CollectiveKind : uint8_t { kShflIdx, kShflUp, kShflDown, kShflXor, kVote, kSyncwarp, kLdmatrix,
                                      kLdmatrixTrans, kMma };
using CollectiveComplete = void (*)(CollectiveKind kind, unsigned mask, const LaneInput* in, int warp);
void warp_collective(CollectiveKind kind, unsigned mask, const LaneInput& in, const char* site,
                     CollectiveComplete complete);

// Poison for shared memory and fresh allocations: 0xFF bytes (a NaN in float32 and bf16).
constexpr uint8_t kPoison = 0xFF;

// ---- the block being run (one at a time: the runtime serialises launches; simt.cpp) ---------------

constexpr size_t kMaxDynamicSmem = 232448;  // sm_90: 227 KiB per block with the opt-in
constexpr size_t kArenaBytes = kMaxDynamicSmem + 4096;  // the dynamic shared memory of every block

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

extern Block g_block;
extern std::atomic<bool> g_active;   // a launch is running (read by the hooks of every host thread)
extern pthread_t g_exec_thread;      // the host thread running it (written before g_active is set)

std::string hex(uintptr_t v);
std::string dim(uint3 v);  // "(x,y,z)"

// Finds the addon's writable static data (the kernels' __shared__ variables), once (memcheck.cpp).
void find_static_range();

}  // namespace step_emu
