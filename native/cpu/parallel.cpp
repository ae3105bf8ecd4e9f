// parallel.cpp: a fixed pool of worker threads fed one parallel region at a time.
// The caller takes part in its own region; chunks (at most 4 per thread) are claimed one at a time
// under the pool's mutex, tagged with the region's generation, so uneven chunk costs balance out and a
// worker that wakes late can never claim a chunk of a region it was not woken for. Regions from
// different threads are serialised by region_mutex_, including those the caller runs alone (one chunk,
// or a pool of one thread): two models segmenting at once take turns op by op, so their ops never
// compute on more than the pool's threads together.
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <utility>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace step::cpu {
namespace {

thread_local bool in_region = false;

class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int threads) {
    std::lock_guard<std::mutex> region(region_mutex_);
    stop();
    stopping_ = false;
    for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this] { work(); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    // A parallel_for inside a region (an op calling another op) runs inline on its thread: the
    // outer region already occupies every core, and waiting for the pool here would deadlock.
    if (in_region) {
      fn(0, n);
      return;
    }
    grain = std::max<int64_t>(1, grain);
    int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(size()) * 4);
    std::lock_guard<std::mutex> region(region_mutex_);
    // One chunk, or no workers (STEP_SEG_NUM_THREADS=1): the caller runs it alone, but still inside
    // the region lock, so that two models segmenting at once take turns here too instead of computing
    // side by side on two threads (which, at 1 thread, would be twice the threads asked for).
    if (chunks <= 1 || workers_.empty()) {
      struct Inline {  // nested parallel_for calls run inline, as in a chunk of a pooled region
        Inline() { in_region = true; }
        ~Inline() { in_region = false; }
      } mark;
      fn(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      next_ = 0;
      done_ = 0;
      failed_ = false;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    drain(generation_);
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return done_ == chunks_; });
    fn_ = nullptr;
    // a chunk that threw (an allocation that failed, say): every chunk has finished or been skipped,
    // and the first exception goes to the caller instead of terminating a pool thread
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  void drain(uint64_t generation) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (generation_ == generation && next_ < chunks_) {
      int64_t c = next_++;
      int64_t begin = n_ * c / chunks_, end = n_ * (c + 1) / chunks_;
      const auto* fn = fn_;
      lock.unlock();
      in_region = true;
      std::exception_ptr error;
      if (!failed_) {  // after a failure the remaining chunks are skipped
        try {
          (*fn)(begin, end);
        } catch (...) {
          error = std::current_exception();
        }
      }
      in_region = false;
      lock.lock();
      if (error && !error_) error_ = error, failed_ = true;
      if (++done_ == chunks_) finished_.notify_all();
    }
  }
  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      drain(seen);
    }
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex region_mutex_, mutex_;
  std::condition_variable wake_, finished_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0, done_ = 0, next_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;  // the first exception of the region, for the caller
  std::atomic<bool> failed_{false};
};

int default_threads() {
  if (const char* env = std::getenv("STEP_SEG_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace step::cpu
