#include "cache/snapshot_writer.h"

#include <utility>

namespace longread::cache {

SnapshotWriter::SnapshotWriter(SnapshotStore* store, SnapshotWriterOptions options)
    : store_(store), options_(std::move(options)) {
  if (options_.start_worker) Start();
}

SnapshotWriter::~SnapshotWriter() { Shutdown(); }

void SnapshotWriter::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_) return;
  started_ = true;
  worker_ = std::thread([this] { Run(); });
}

bool SnapshotWriter::Due(const DocPolicyState& state, int64_t segment, absl::Time now) const {
  const SnapshotPolicy& p = options_.policy;
  if (p.every_n_segments <= 0 && p.every <= absl::ZeroDuration()) return true;
  if (p.every_n_segments > 0 && segment - state.last_segment >= p.every_n_segments) return true;
  return p.every > absl::ZeroDuration() && now - state.last_time >= p.every;
}

bool SnapshotWriter::Offer(std::string doc_id, engine::MemorySnapshot snapshot, std::string job_id,
                           bool force) {
  const absl::Time now = options_.clock();
  absl::MutexLock lock(&mu_);
  ++stats_.offered;
  if (stopping_) {
    ++stats_.dropped;
    return false;
  }
  auto [state, inserted] = policy_.try_emplace(doc_id, DocPolicyState{0, now});
  if (!force && !Due(state->second, snapshot.segment_index, now)) {
    ++stats_.not_due;
    return false;
  }
  auto queued = pending_.find(doc_id);
  if (queued != pending_.end()) {
    queued->second = Pending{std::move(snapshot), std::move(job_id)};
    ++stats_.coalesced;
  } else if (pending_.size() >= options_.max_pending_documents) {
    ++stats_.dropped;
    return false;
  } else {
    order_.push_back(doc_id);
    state->second.last_segment = snapshot.segment_index;
    state->second.last_time = now;
    pending_.emplace(std::move(doc_id), Pending{std::move(snapshot), std::move(job_id)});
    ++stats_.queued;
    return true;
  }
  state->second.last_segment = queued->second.snapshot.segment_index;
  state->second.last_time = now;
  return true;
}

bool SnapshotWriter::WantsSnapshot(std::string_view doc_id, int64_t segment_index) const {
  const absl::Time now = options_.clock();
  absl::MutexLock lock(&mu_);
  auto it = policy_.find(std::string(doc_id));
  const DocPolicyState state = it != policy_.end() ? it->second : DocPolicyState{0, now};
  return !stopping_ && Due(state, segment_index, now);
}

void SnapshotWriter::Discard(std::string_view doc_id) {
  absl::MutexLock lock(&mu_);
  const std::string key(doc_id);
  policy_.erase(key);
  if (pending_.erase(key) > 0) {
    for (auto it = order_.begin(); it != order_.end(); ++it) {
      if (*it == key) {
        order_.erase(it);
        break;
      }
    }
  }
}

void SnapshotWriter::Run() {
  while (true) {
    std::string doc_id;
    Pending item;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SnapshotWriter* w)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) { return !w->order_.empty() || w->stopping_; },
          this));
      if (order_.empty()) return;  // stopping and drained
      doc_id = std::move(order_.front());
      order_.pop_front();
      auto it = pending_.find(doc_id);
      item = std::move(it->second);
      pending_.erase(it);
      ++in_flight_;
    }
    PutOptions put;
    put.sync = options_.policy.sync;
    put.job_id = std::move(item.job_id);
    put.now = options_.clock();
    absl::StatusOr<PutResult> result = store_->Put(doc_id, item.snapshot, put);
    absl::MutexLock lock(&mu_);
    --in_flight_;
    if (result.ok()) {
      ++stats_.written;
    } else {
      ++stats_.failed;
      if (first_error_.ok()) first_error_ = result.status();
    }
  }
}

absl::Status SnapshotWriter::Flush() {
  absl::MutexLock lock(&mu_);
  if (started_) {
    mu_.Await(absl::Condition(
        +[](SnapshotWriter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
          return w->order_.empty() && w->in_flight_ == 0;
        },
        this));
  } else if (!order_.empty()) {
    return absl::FailedPreconditionError("SnapshotWriter::Flush before Start");
  }
  absl::Status error = std::move(first_error_);
  first_error_ = absl::OkStatus();
  return error;
}

void SnapshotWriter::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  // A writer that never started still owes its queue to the store.
  bool started;
  {
    absl::MutexLock lock(&mu_);
    started = started_;
  }
  if (!started) {
    worker_ = std::thread([this] { Run(); });
  }
  worker_.join();
}

SnapshotWriterStats SnapshotWriter::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace longread::cache
