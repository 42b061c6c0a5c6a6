// Documents read on many threads share forward passes (issue 19, item 2): each document's
// thread hands its next segment to the batcher and waits; the first thread to find no pass
// running leads: it takes every segment handed in so far (up to `max_documents`) and reads them
// as one ReadingBackend::ReadSegments pass, then wakes each with its result. Documents join by
// handing in a segment and leave by handing in no more: nothing is registered. While a pass
// runs, the next pass's segments gather, so a busy device reads many documents per pass (the
// continuous batching of LLM servers, one segment per document per pass). A leader first waits
// up to `gather` for as many segments as there were documents at the end of the last pass (those
// it read and those waiting): the documents it read hand in their next segments a moment apart,
// and without the wait two documents would take turns, one per pass. A document that left costs
// one pass that wait.
//
// `read_pass` runs a pass: the caller's place to take its per-model lock around
// ReadSegments (reading_backend.h's threading rule). A read whose tokens are outside the
// vocabulary fails alone (InvalidArgument) and is left out of the pass; any other failure of a
// pass is every read's in it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/memory/reading_backend.h"

namespace longread::engine {

class SegmentBatcher {
 public:
  using PassFn = std::function<absl::Status(std::span<const SegmentRead> reads)>;

  // `backend` (not owned) is the documents' backend; `read_pass` null: backend->ReadSegments.
  SegmentBatcher(ReadingBackend* backend, int64_t max_documents, PassFn read_pass = nullptr,
                 absl::Duration gather = absl::Milliseconds(2));

  // Reads `tokens` into `document` (as DocumentState::ReadSegment without an observer) in the
  // next pass that takes it; blocks until that pass is done. At most one call per document at a
  // time.
  absl::Status Read(DocumentState* document, std::span<const int32_t> tokens, LogitsMode mode,
                    std::vector<float>* logits);

  // Passes run and segments read so far (how full the passes were).
  int64_t passes() const;
  int64_t segments() const;

 private:
  struct Waiting {
    SegmentRead read;
    absl::Status status;
    bool done = false;
  };
  // The leader's pass over `batch` (no lock held); sets each one's status.
  void RunPass(const std::vector<Waiting*>& batch);
  bool Gathered() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int64_t>(queue_.size()) >= std::min(expected_, max_documents_);
  }

  ReadingBackend* backend_;
  int64_t max_documents_;
  PassFn read_pass_;
  absl::Duration gather_;
  mutable absl::Mutex mu_;
  absl::CondVar pass_done_;
  std::deque<Waiting*> queue_ ABSL_GUARDED_BY(mu_);
  bool leading_ ABSL_GUARDED_BY(mu_) = false;
  int64_t expected_ ABSL_GUARDED_BY(mu_) = 1;  // documents at the end of the last pass
  int64_t passes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t segments_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace longread::engine
