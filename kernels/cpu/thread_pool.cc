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
// for may need this core), then sleep on the futex.
constexpr int kSpinIterations = 1 << 12;
constexpr int kYieldIterations = 64;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    stopping_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  work_posted_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunChunk(int chunk_index) {
  const int64_t begin = job_n_ * chunk_index / n_threads_;
  const int64_t end = job_n_ * (chunk_index + 1) / n_threads_;
  if (begin < end) (*job_fn_)(begin, end);
}

void ThreadPool::WorkerLoop(int worker_index) {
  // Generation 0 is the pool's state at construction; a thread that starts late must still run
  // every job posted since then.
  uint32_t seen = 0;
  while (true) {
    uint32_t now = generation_.load(std::memory_order_acquire);
    for (int spin = 0; now == seen && spin < kSpinIterations + kYieldIterations; ++spin) {
      if (spin < kSpinIterations) {
        CpuRelax();
      } else {
        std::this_thread::yield();
      }
      now = generation_.load(std::memory_order_acquire);
    }
    if (now == seen) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      work_posted_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      continue;
    }
    seen = now;
    if (stopping_.load(std::memory_order_acquire)) return;
    RunChunk(worker_index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);  // orders the wake after the caller sleeps
      work_done_.notify_one();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> lock(call_mutex_);
  job_fn_ = &fn;
  job_n_ = n;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  work_posted_.notify_all();
  RunChunk(0);
  int32_t left = pending_.load(std::memory_order_acquire);
  for (int spin = 0; left != 0 && spin < kSpinIterations + kYieldIterations; ++spin) {
    if (spin < kSpinIterations) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
    left = pending_.load(std::memory_order_acquire);
  }
  if (left != 0) {
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    work_done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
  }
  job_fn_ = nullptr;
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
