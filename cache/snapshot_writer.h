// Writes snapshots off the reader's critical path. The runner offers a snapshot after every
// segment (by move); the policy decides whether it is due; due snapshots wait in a bounded queue
// holding at most one snapshot per document (a newer one replaces the queued one), and a
// background thread writes them with SnapshotStore::Put. Offer never waits on RocksDB.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cache/snapshot_store.h"
#include "engine/memory/snapshot.h"

namespace longread::cache {

// A snapshot is due when every_n_segments segments have passed since the document's last queued
// snapshot, or `every` time has; a zero disables that trigger; with both zero every segment is
// due. After a crash the work redone is at most one interval (plus the segment in flight).
struct SnapshotPolicy {
  int every_n_segments = 1;
  absl::Duration every = absl::ZeroDuration();
  bool sync = false;  // fsync each write; without it a machine (not process) crash can lose the
                      // last writes that were not yet synced by the OS
};

struct SnapshotWriterOptions {
  SnapshotPolicy policy;
  // Documents with a snapshot waiting. When full, a snapshot of a document not already queued is
  // dropped (counted in stats) instead of blocking the reader; its next offer is due again.
  size_t max_pending_documents = 64;
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  bool start_worker = true;  // false: nothing is written until Start() (tests)
};

struct SnapshotWriterStats {
  uint64_t offered = 0;
  uint64_t not_due = 0;    // skipped by the policy
  uint64_t queued = 0;     // entered the queue as a new entry
  uint64_t coalesced = 0;  // replaced a queued, unwritten snapshot of the same document
  uint64_t dropped = 0;    // queue full
  uint64_t written = 0;
  uint64_t failed = 0;
};

class SnapshotWriter {
 public:
  SnapshotWriter(SnapshotStore* store, SnapshotWriterOptions options = {});
  ~SnapshotWriter();  // Shutdown()
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  // Hands over the snapshot after a segment; returns whether it was queued. `force` bypasses the
  // policy (e.g. when the document pauses or the service drains).
  bool Offer(std::string doc_id, engine::MemorySnapshot snapshot, std::string job_id = "",
             bool force = false);
  // Whether a snapshot of this document at `segment_index` would be due now. Building a
  // snapshot copies the whole memory (tens of MiB), so the runner asks first and builds it only
  // when due.
  bool WantsSnapshot(std::string_view doc_id, int64_t segment_index) const;
  // Drops a queued snapshot of the document and its policy state (call before DeleteDocument;
  // a write already in progress still lands).
  void Discard(std::string_view doc_id);
  void Start();
  // Waits until everything queued so far is written; returns the first write error since the
  // previous Flush (OK if none).
  absl::Status Flush();
  // Writes what is queued, then stops the thread. Offers after Shutdown are dropped.
  void Shutdown();
  SnapshotWriterStats stats() const;

 private:
  struct Pending {
    engine::MemorySnapshot snapshot;
    std::string job_id;
  };
  struct DocPolicyState {
    int64_t last_segment = 0;
    absl::Time last_time;
  };

  bool Due(const DocPolicyState& state, int64_t segment, absl::Time now) const;
  void Run();

  SnapshotStore* store_;
  const SnapshotWriterOptions options_;
  mutable absl::Mutex mu_;
  std::unordered_map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);  // pending doc ids, oldest first
  std::unordered_map<std::string, DocPolicyState> policy_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  SnapshotWriterStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread worker_;
};

}  // namespace longread::cache
