// One persistent pool of worker threads for the CPU kernels. The caller of ParallelFor is one of
// the workers, so ThreadPool(1) runs everything inline. Chunks are claimed, not assigned: whoever
// is running takes the next unclaimed chunk, so a worker that the OS has not scheduled yet (the
// machine is often oversubscribed) delays nothing; the caller then runs its chunk too. Workers
// spin briefly after each job (the next kernel call usually follows within microseconds), then
// sleep on a condition variable. ParallelFor does not allocate.
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
  // The split depends only on n and size(), never on timing (which thread runs a chunk does).
  // Calls from several threads are serialized; fn must not call ParallelFor on the same pool.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t begin, int64_t end)> fn);

  // Chunks that ran on a worker thread rather than on the caller, since construction (tests).
  int64_t chunks_run_by_workers() const { return worker_chunks_.load(std::memory_order_relaxed); }

 private:
  using Job = absl::FunctionRef<void(int64_t, int64_t)>;
  void WorkerLoop();
  // Claims and runs chunks of generation `generation` until none is left unclaimed.
  void ClaimChunks(uint32_t generation, bool is_worker);

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;
  // Generation of the current job (high 32 bits) and its next unclaimed chunk (low 32 bits) in
  // one word, so that a claim is one compare-and-swap that fails once the job has changed.
  std::atomic<uint64_t> state_{0};
  std::atomic<int32_t> chunks_done_{0};
  std::atomic<bool> stopping_{false};
  // The job; written before state_ announces its generation. Atomics because a late worker may
  // read them while the next job is being posted (its claim then fails and it drops what it read).
  std::atomic<const Job*> job_fn_{nullptr};
  std::atomic<int64_t> job_n_{0};
  // Sleeping uses mutex + condition variable, not std::atomic::wait: libstdc++ 12's atomic
  // wait/notify lost wake-ups here (a worker slept through a new generation and the caller
  // waited forever; reproduced by tests/engine/memory/sparsek_memory_test). The sleeper counts
  // let the poster skip the mutex and the notify when nobody sleeps (the common case in a
  // forward pass, where workers are still spinning).
  std::mutex sleep_mutex_;
  std::condition_variable work_posted_;
  std::condition_variable work_done_;
  std::atomic<int32_t> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<int64_t> worker_chunks_{0};
};

// Threads the kernels should use: env LONGREAD_THREADS when set to a positive integer, else
// std::thread::hardware_concurrency() (at least 1).
int DefaultThreadCount();

}  // namespace longread::kernels
