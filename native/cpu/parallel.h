// parallel.h: the CPU backend's thread pool. parallel_for splits [0, n) into contiguous chunks run by
// the pool's workers and the calling thread; it returns when all chunks are done. One parallel region
// runs at a time (two models segmenting at once take turns op by op), so an op may use all cores.
#pragma once
#include <cstdint>
#include <functional>

namespace step::cpu {

// Number of threads used by parallel regions (workers + caller). Default: the machine's cores, or
// STEP_SEG_NUM_THREADS when set.
int num_threads();
void set_num_threads(int n);

// Runs fn(begin, end) over chunks of [0, n) of at least `grain` items each.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace step::cpu
