// One persistent pool of worker threads for the CPU kernels. The caller of ParallelFor is one of
// the workers, so ThreadPool(1) runs everything inline. Workers spin briefly after each job (the
// next kernel call usually follows within microseconds), then sleep on a futex. ParallelFor does
// not allocate.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace longread::kernels {

class ThreadPool {
 public:
  // n_threads >= 1 (values below 1 are treated as 1); n_threads - 1 threads are started.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(begin, end) over [0, n) split into size() contiguous chunks of nearly equal length
  // (chunk i = [n*i/size, n*(i+1)/size), empty chunks are not called); blocks until all are done.
  // The split depends only on n and size(), never on timing. Calls from several threads are
  // serialized; fn must not call ParallelFor on the same pool.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t begin, int64_t end)> fn);

 private:
  void WorkerLoop(int worker_index);
  void RunChunk(int chunk_index);

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int32_t> pending_{0};
  std::atomic<bool> stopping_{false};
  // Sleeping uses mutex + condition variable, not std::atomic::wait: libstdc++ 12's atomic
  // wait/notify lost wake-ups here (a worker slept through a new generation and the caller
  // waited forever on pending_; reproduced by tests/engine/memory/sparsek_memory_test).
  std::mutex sleep_mutex_;
  std::condition_variable work_posted_;
  std::condition_variable work_done_;
  // The job being run; written before generation_ is bumped, read by workers after they see it.
  const absl::FunctionRef<void(int64_t, int64_t)>* job_fn_ = nullptr;
  int64_t job_n_ = 0;
};

// Threads the kernels should use: env LONGREAD_THREADS when set to a positive integer, else
// std::thread::hardware_concurrency() (at least 1).
int DefaultThreadCount();

}  // namespace longread::kernels
