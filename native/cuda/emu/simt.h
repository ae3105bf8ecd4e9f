// simt.h: the SIMT core's internals shared by simt.cpp (fibers, barriers, memory checks) and ptx.cpp
// (the PTX instruction twins, which are warp collectives and shared-memory accesses of their own).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

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

}  // namespace step_emu
