#include "kernels/thread_pool.h"

#include <cstdlib>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace longread::kernels {
namespace {

// Waiting is spin (kernel calls of one forward pass follow each other within microseconds, and a
// futex wake costs more), then yield (when the machine is oversubscribed, the thread we wait
// for may need this core), then sleep. The spin is bounded (~4096 pauses, tens of microseconds):
// unbounded spinning collapses throughput when the cores are shared with other work.
constexpr int kSpinIterations = 1 << 12;
constexpr int kYieldIterations = 64;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Spins, then yields, until done() or the budget is spent; returns done().
template <typename Done>
bool SpinThenYield(Done done) {
  for (int spin = 0; spin < kSpinIterations + kYieldIterations; ++spin) {
    if (done()) return true;
    if (spin < kSpinIterations) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
  return done();
}

inline uint32_t Generation(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
inline uint32_t NextChunk(uint64_t state) { return static_cast<uint32_t>(state); }

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    stopping_.store(true, std::memory_order_seq_cst);
    const uint32_t next = Generation(state_.load(std::memory_order_relaxed)) + 1;
    // A generation with no chunk left to claim: workers only notice that it changed.
    state_.store((uint64_t{next} << 32) | static_cast<uint32_t>(n_threads_),
                 std::memory_order_seq_cst);
  }
  work_posted_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ClaimChunks(uint32_t generation, bool is_worker) {
  uint64_t state = state_.load(std::memory_order_acquire);
  while (Generation(state) == generation && NextChunk(state) < static_cast<uint32_t>(n_threads_)) {
    // Read the job before claiming: a successful claim proves the job had not changed (the
    // caller posts the next job only after every chunk of this one is done, and generations
    // only grow), so what was read belongs to the claimed chunk.
    const Job* fn = job_fn_.load(std::memory_order_relaxed);
    const int64_t n = job_n_.load(std::memory_order_relaxed);
    if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      continue;  // `state` now holds the current value
    }
    const int64_t chunk = NextChunk(state);
    const int64_t begin = n * chunk / n_threads_;
    const int64_t end = n * (chunk + 1) / n_threads_;
    if (begin < end) {
      (*fn)(begin, end);
      if (is_worker) worker_chunks_.fetch_add(1, std::memory_order_relaxed);
    }
    if (chunks_done_.fetch_add(1, std::memory_order_seq_cst) + 1 == n_threads_ && is_worker &&
        caller_sleeping_.load(std::memory_order_seq_cst)) {
      // The caller sleeps (or is about to: it checks chunks_done_ under the mutex after setting
      // caller_sleeping_); taking the mutex orders this wake after its check.
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      work_done_.notify_one();
    }
    state = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::WorkerLoop() {
  // Generation 0 is the pool's state at construction (no job).
  uint32_t seen = 0;
  while (true) {
    const bool changed =
        SpinThenYield([&] { return Generation(state_.load(std::memory_order_acquire)) != seen; });
    if (!changed) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      sleeping_workers_.fetch_add(1, std::memory_order_seq_cst);
      work_posted_.wait(lock,
                        [&] { return Generation(state_.load(std::memory_order_seq_cst)) != seen; });
      sleeping_workers_.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    if (stopping_.load(std::memory_order_acquire)) return;
    seen = Generation(state_.load(std::memory_order_acquire));
    ClaimChunks(seen, /*is_worker=*/true);
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  job_fn_.store(&fn, std::memory_order_relaxed);
  job_n_.store(n, std::memory_order_relaxed);
  chunks_done_.store(0, std::memory_order_relaxed);
  const uint32_t generation = Generation(state_.load(std::memory_order_relaxed)) + 1;
  state_.store(uint64_t{generation} << 32, std::memory_order_seq_cst);
  if (sleeping_workers_.load(std::memory_order_seq_cst) > 0) {
    // A worker that counted itself as sleeping checks the generation under the mutex, so taking
    // it here orders the notify after that check.
    { std::lock_guard<std::mutex> lock(sleep_mutex_); }
    work_posted_.notify_all();
  }
  ClaimChunks(generation, /*is_worker=*/false);
  // Only chunks that a worker claimed and is still running are left.
  auto all_done = [&] { return chunks_done_.load(std::memory_order_seq_cst) == n_threads_; };
  if (!SpinThenYield(all_done)) {
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    work_done_.wait(lock, all_done);
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
  job_fn_.store(nullptr, std::memory_order_relaxed);
}

int DefaultThreadCount() {
  if (const char* env = std::getenv("LONGREAD_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (end != nullptr && *end == '\0' && value > 0 && value <= 4096)
      return static_cast<int>(value);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

}  // namespace longread::kernels
