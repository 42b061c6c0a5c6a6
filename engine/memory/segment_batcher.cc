#include "engine/memory/segment_batcher.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace longread::engine {

SegmentBatcher::SegmentBatcher(ReadingBackend* backend, int64_t max_documents, PassFn read_pass,
                               absl::Duration gather)
    : backend_(backend),
      max_documents_(std::max<int64_t>(1, max_documents)),
      read_pass_(std::move(read_pass)),
      gather_(gather) {
  if (!read_pass_) {
    read_pass_ = [this](std::span<const SegmentRead> reads) {
      return backend_->ReadSegments(reads);
    };
  }
}

absl::Status SegmentBatcher::Read(DocumentState* document, std::span<const int32_t> tokens,
                                  LogitsMode mode, std::vector<float>* logits) {
  Waiting me;
  me.read = SegmentRead{document, tokens, mode, logits};
  absl::MutexLock lock(&mu_);
  queue_.push_back(&me);
  while (!me.done) {
    if (leading_) {
      pass_done_.Wait(&mu_);  // that pass took this read, or this thread may lead the next
      continue;
    }
    leading_ = true;
    mu_.AwaitWithTimeout(absl::Condition(this, &SegmentBatcher::Gathered), gather_);
    std::vector<Waiting*> batch;
    while (!queue_.empty() && static_cast<int64_t>(batch.size()) < max_documents_) {
      batch.push_back(queue_.front());
      queue_.pop_front();
    }
    mu_.Unlock();
    RunPass(batch);
    mu_.Lock();
    for (Waiting* w : batch) w->done = true;
    ++passes_;
    segments_ += static_cast<int64_t>(batch.size());
    // The documents just read come back with their next segments a moment apart; those
    // already waiting are here. (Leading at once instead would let two documents take turns,
    // one per pass, forever.)
    expected_ = static_cast<int64_t>(batch.size() + queue_.size());
    leading_ = false;
    pass_done_.SignalAll();
  }
  return me.status;
}

void SegmentBatcher::RunPass(const std::vector<Waiting*>& batch) {
  const int32_t vocab = backend_->config().vocab_size;
  std::vector<SegmentRead> reads;
  std::vector<Waiting*> in_pass;
  for (Waiting* w : batch) {
    const auto& t = w->read.tokens;
    const auto bad =
        std::find_if(t.begin(), t.end(), [&](int32_t id) { return id < 0 || id >= vocab; });
    if (bad != t.end()) {
      w->status = absl::InvalidArgumentError(
          absl::StrCat("token id ", *bad, " outside the vocabulary of ", vocab));
      continue;
    }
    reads.push_back(w->read);
    in_pass.push_back(w);
  }
  if (reads.empty()) return;
  const absl::Status status = read_pass_(reads);
  for (Waiting* w : in_pass) w->status = status;
}

int64_t SegmentBatcher::passes() const {
  absl::MutexLock lock(&mu_);
  return passes_;
}

int64_t SegmentBatcher::segments() const {
  absl::MutexLock lock(&mu_);
  return segments_;
}

}  // namespace longread::engine
