// A FIFO lock: whoever asked first runs first. Documents share one model and one thread pool and
// each takes the lock for one step (a segment, or a token); with a plain mutex the thread that
// just released it tends to win again, so one document could starve the others. A ticket queue
// makes them take turns.
#pragma once

#include <cstdint>

#include "absl/synchronization/mutex.h"

namespace longread::worker {

class FairLock {
 public:
  void Lock() {
    absl::MutexLock lock(&mu_);
    const uint64_t ticket = next_ticket_++;
    auto my_turn = [this, ticket]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return serving_ == ticket; };
    mu_.Await(absl::Condition(&my_turn));
  }
  void Unlock() {
    absl::MutexLock lock(&mu_);
    ++serving_;
  }

 private:
  absl::Mutex mu_;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t serving_ ABSL_GUARDED_BY(mu_) = 0;
};

class FairLockGuard {
 public:
  explicit FairLockGuard(FairLock* lock) : lock_(lock) { lock_->Lock(); }
  ~FairLockGuard() { lock_->Unlock(); }
  FairLockGuard(const FairLockGuard&) = delete;
  FairLockGuard& operator=(const FairLockGuard&) = delete;

 private:
  FairLock* lock_;
};

}  // namespace longread::worker
