// Coordinator::RunDocument: one document on one worker over one RunDocument stream. A writer
// thread sends the assignment, the checkpoint to resume from (snapshot slices, then archive
// blocks in put order) and the tokens; this thread reads what the worker streams back and
// decides, when the stream ends, whether the document is done, cancelled, failed, or goes back
// to the queue to resume elsewhere from its last checkpoint.
#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "services/common/log.h"
#include "services/coordinator/coordinator.h"

namespace longread::coordinator {

using services::Log;
using services::LogLevel;

namespace {
constexpr int64_t kTokensPerMessage = 16384;
constexpr size_t kResumeMessageBytes = 4 << 20;
}  // namespace

void Coordinator::RunDocument(std::shared_ptr<JobRuntime> job, int index,
                              std::shared_ptr<Worker> worker, std::shared_ptr<DocumentRun> run) {
  const std::string job_id = job->header.job_id();
  const std::string doc = std::to_string(index);
  v1::RunDocumentInput assignment;
  int64_t total = 0;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    const DocRuntime& d = job->docs[index];
    v1::DocumentAssignment* a = assignment.mutable_assignment();
    a->set_job_id(job_id);
    a->set_document_index(index);
    a->set_attempt(d.status.stats().attempts());
    *a->mutable_task() = job->header.task();
    *a->mutable_options() = job->header.options();
    total = d.status.total_tokens();
    a->set_total_tokens(total);
    a->set_checkpoint_seconds(options_.checkpoint_seconds);
    a->set_model_fingerprint(options_.model_fingerprint);
    a->set_invalid_utf8_sequences(d.status.stats().invalid_utf8_sequences());
    a->set_answer_bytes_streamed(static_cast<int64_t>(d.status.answer().size()));
  }
  CommittedCheckpoint checkpoint;
  if (auto c = store_->GetCheckpoint(job_id, index); c.ok()) {
    checkpoint = *c;
  } else {
    Log(LogLevel::kWarning, "checkpoint_unreadable",
        {{"job", job_id}, {"document", doc}, {"error", std::string(c.status().message())}});
  }
  (void)store_->DropUncommitted(job_id, index, checkpoint.seq);
  const int64_t resume = checkpoint.seq > 0 ? checkpoint.document_tokens : 0;
  assignment.mutable_assignment()->set_resume_from_tokens(resume);

  std::unique_ptr<grpc::ClientReaderWriter<v1::RunDocumentInput, v1::RunDocumentOutput>> stream =
      worker->stub->RunDocument(&run->context);
  bool resume_broken = false;
  std::thread writer([&] {
    bool ok = stream->Write(assignment);
    if (ok && checkpoint.seq > 0) {
      // The archive's blocks of every checkpoint up to the resume point (oldest first), then the
      // resume point's snapshot; the last part closes it.
      const absl::Time start = absl::Now();
      int64_t bytes = 0, blocks = 0;
      size_t batch = 0;
      v1::RunDocumentInput m;
      v1::CheckpointPart* part = m.mutable_resume();
      part->set_sequence(checkpoint.seq);
      part->set_document_tokens(checkpoint.document_tokens);
      absl::Status s = store_->ReadArchive(job_id, index, checkpoint, [&](std::string_view b) {
        if (!part->add_archive_blocks()->ParseFromArray(b.data(), static_cast<int>(b.size()))) {
          return false;
        }
        ++blocks;
        batch += b.size();
        bytes += static_cast<int64_t>(b.size());
        if (batch >= kResumeMessageBytes) {
          ok = stream->Write(m);
          part->clear_archive_blocks();
          batch = 0;
        }
        return ok;
      });
      if (s.ok() && ok && batch > 0) {
        ok = stream->Write(m);
        part->clear_archive_blocks();
      }
      if (s.ok() && ok) {
        s = store_->ReadSnapshot(job_id, index, checkpoint, [&](std::string_view b) {
          if (!part->snapshot().empty()) {
            ok = stream->Write(m);
            if (!ok) return false;
          }
          part->set_snapshot(std::string(b));
          bytes += static_cast<int64_t>(b.size());
          return true;
        });
      }
      if (!s.ok()) {
        // Unusable checkpoint: drop it so the next attempt reads from the beginning.
        Log(LogLevel::kError, "checkpoint_damaged",
            {{"job", job_id}, {"document", doc}, {"error", std::string(s.message())}});
        resume_broken = true;
        run->context.TryCancel();
        ok = false;
      }
      if (ok) {
        part->set_last(true);
        part->set_archive_error(checkpoint.archive_error);
        ok = stream->Write(m);
        Log(LogLevel::kInfo, "checkpoint_sent",
            {{"job", job_id},
             {"document", doc},
             {"worker", worker->address},
             {"seq", std::to_string(checkpoint.seq)},
             {"document_tokens", std::to_string(checkpoint.document_tokens)},
             {"bytes", std::to_string(bytes)},
             {"archive_blocks", std::to_string(blocks)},
             {"seconds", absl::StrFormat("%.3f", absl::ToDoubleSeconds(absl::Now() - start))}});
      }
    }
    if (ok) {
      (void)store_->ReadTokens(job_id, index, resume, kTokensPerMessage,
                               [&](int64_t offset, std::span<const int32_t> tokens) {
                                 {
                                   std::lock_guard<std::mutex> lock(run->mu);
                                   if (run->cancel) return false;
                                 }
                                 v1::RunDocumentInput m;
                                 v1::TokenChunk* c = m.mutable_tokens();
                                 c->set_offset(offset);
                                 c->mutable_tokens()->Add(tokens.begin(), tokens.end());
                                 c->set_last(offset + static_cast<int64_t>(tokens.size()) == total);
                                 ok = stream->Write(m);
                                 return ok;
                               });
    }
    // Half-close: the worker ends the call once it has answered. Cancelling is TryCancel.
    if (ok) stream->WritesDone();
  });

  // What the worker streams back.
  int64_t storing_seq = checkpoint.seq + 1;
  int64_t parts = 0, blocks = 0, checkpoint_bytes = 0;
  absl::Time checkpoint_start;
  bool in_checkpoint = false, store_failed = false;
  std::string checkpoint_archive_error;
  bool finished = false, handed_back = false, got_output = false;
  int64_t last_progress = resume;
  v1::DocumentFinished result;
  v1::RunDocumentOutput out;
  while (stream->Read(&out)) {
    got_output = true;
    switch (out.kind_case()) {
      case v1::RunDocumentOutput::kProgress: {
        const v1::ReadProgress& p = out.progress();
        std::lock_guard<std::mutex> lock(job->mu);
        DocRuntime& d = job->docs[index];
        if (IsTerminal(d.status.state())) break;  // its job's deadline passed: nothing to add
        if (p.tokens_read() > last_progress) {
          metrics_->base->tokens_read().Increment(
              static_cast<double>(p.tokens_read() - last_progress));
        }
        last_progress = p.tokens_read();
        d.status.set_tokens_read(p.tokens_read());
        d.max_tokens_read = std::max(d.max_tokens_read, p.tokens_read());
        v1::JobEvent e;
        v1::SegmentProgress* sp = e.mutable_progress();
        sp->set_document_index(index);
        sp->set_tokens_read(p.tokens_read());
        sp->set_total_tokens(total);
        sp->set_tokens_per_second(p.tokens_per_second());
        EmitLocked(*job, std::move(e), {index});
        break;
      }
      case v1::RunDocumentOutput::kCheckpoint: {
        const v1::CheckpointPart& part = out.checkpoint();
        if (!in_checkpoint) {
          in_checkpoint = true;
          checkpoint_start = absl::Now();
          parts = blocks = checkpoint_bytes = 0;
        }
        absl::Status s;
        if (!part.archive_error().empty()) checkpoint_archive_error = part.archive_error();
        if (!part.snapshot().empty()) {
          s = store_->PutSnapshotPart(job_id, index, storing_seq, parts++, part.snapshot());
          checkpoint_bytes += static_cast<int64_t>(part.snapshot().size());
        }
        for (const v1::ArchivedBlock& block : part.archive_blocks()) {
          if (!s.ok()) break;
          const std::string bytes = block.SerializeAsString();
          s = store_->PutArchiveBlock(job_id, index, storing_seq, blocks++, bytes);
          checkpoint_bytes += static_cast<int64_t>(bytes.size());
        }
        if (s.ok() && part.last()) {
          CommittedCheckpoint c{storing_seq, part.document_tokens(), parts,
                                checkpoint_archive_error};
          s = store_->CommitCheckpoint(job_id, index, c);
          if (s.ok()) {
            metrics_->checkpoint_bytes->Increment(static_cast<double>(checkpoint_bytes));
            Log(LogLevel::kInfo, "checkpoint_stored",
                {{"job", job_id},
                 {"document", doc},
                 {"worker", worker->address},
                 {"seq", std::to_string(storing_seq)},
                 {"document_tokens", std::to_string(part.document_tokens())},
                 {"bytes", std::to_string(checkpoint_bytes)},
                 {"snapshot_parts", std::to_string(parts)},
                 {"archive_blocks", std::to_string(blocks)},
                 {"seconds",
                  absl::StrFormat("%.3f", absl::ToDoubleSeconds(absl::Now() - checkpoint_start))}});
            ++storing_seq;
            in_checkpoint = false;
          }
        }
        if (!s.ok()) {
          Log(LogLevel::kError, "checkpoint_store_failed",
              {{"job", job_id}, {"document", doc}, {"error", std::string(s.message())}});
          store_failed = true;
          run->context.TryCancel();
        }
        break;
      }
      case v1::RunDocumentOutput::kAnswer: {
        std::lock_guard<std::mutex> lock(job->mu);
        DocRuntime& d = job->docs[index];
        if (IsTerminal(d.status.state())) break;
        d.attempt_answer += out.answer().text();
        // After a failover the answer is generated again from its start: only text beyond what
        // watchers already got is new (greedy decoding makes it the same text).
        if (d.attempt_answer.size() > d.status.answer().size() &&
            absl::StartsWith(d.attempt_answer, d.status.answer())) {
          const std::string delta = d.attempt_answer.substr(d.status.answer().size());
          d.status.mutable_answer()->append(delta);
          v1::JobEvent e;
          e.mutable_answer()->set_document_index(index);
          e.mutable_answer()->set_text(delta);
          EmitLocked(*job, std::move(e), {index});
        }
        break;
      }
      case v1::RunDocumentOutput::kFinished:
        result = out.finished();
        finished = true;
        break;
      case v1::RunDocumentOutput::kHandedBack:
        handed_back = true;
        Log(LogLevel::kInfo, "document_handed_back",
            {{"job", job_id},
             {"document", doc},
             {"worker", worker->address},
             {"reason", out.handed_back().reason()}});
        break;
      default:
        break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(run->mu);
    run->ended = true;
  }
  run->cv.notify_all();
  writer.join();
  const grpc::Status status = stream->Finish();
  if (resume_broken) (void)store_->DeleteCheckpoints(job_id, index);

  bool stopping;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping = stop_;
  }
  bool requeue = false;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    DocRuntime& d = job->docs[index];
    d.run = nullptr;
    auto back_to_queue = [&] {
      SetDocStateLocked(*job, index, v1::DOCUMENT_STATE_QUEUED);
      d.status.clear_worker();
      PersistLocked(*job, {index});
      requeue = true;
    };
    if (IsTerminal(d.status.state())) {
      // It ended while it ran (its job's deadline passed); checkpoints stored since are moot.
      (void)store_->DeleteCheckpoints(job_id, index);
    } else if (finished) {
      const std::string& answer = result.answer();
      if (answer.size() > d.status.answer().size() && absl::StartsWith(answer, d.status.answer())) {
        v1::JobEvent e;
        e.mutable_answer()->set_document_index(index);
        e.mutable_answer()->set_text(answer.substr(d.status.answer().size()));
        EmitLocked(*job, std::move(e), {});
      } else if (answer != d.status.answer()) {
        Log(LogLevel::kWarning, "answer_differs_from_streamed",
            {{"job", job_id}, {"document", doc}});
      }
      d.status.set_answer(answer);
      v1::DocumentStats stats = result.stats();
      stats.set_attempts(d.status.stats().attempts());
      stats.set_tokens_reread(d.status.stats().tokens_reread());
      stats.set_invalid_utf8_sequences(d.status.stats().invalid_utf8_sequences());
      stats.set_document_tokens(total);
      *d.status.mutable_stats() = stats;
      d.status.set_tokens_read(total);
      Log(LogLevel::kInfo, "document_finished",
          {{"job", job_id},
           {"document", doc},
           {"worker", worker->address},
           {"checkpoints", std::to_string(result.checkpoints())},
           {"checkpoint_bytes", std::to_string(result.checkpoint_bytes())},
           {"checkpoint_seconds", absl::StrFormat("%.3f", result.checkpoint_seconds())},
           {"archive_bytes", std::to_string(result.archive_bytes())},
           {"read_seconds", absl::StrFormat("%.3f", stats.read_seconds())},
           {"generated_tokens", std::to_string(stats.generated_tokens())}});
      metrics_->base->tokens_generated().Increment(static_cast<double>(stats.generated_tokens()));
      (void)store_->DeleteCheckpoints(job_id, index);
      FinishDocLocked(*job, index, v1::DOCUMENT_STATE_SUCCEEDED, "", 0);
    } else if (stopping) {
      // Left RUNNING in the log: the next coordinator resumes it from its checkpoint.
    } else if (run->cancel || job->header.cancel_requested()) {
      FinishDocLocked(*job, index, v1::DOCUMENT_STATE_CANCELLED, "", 1);
    } else if (handed_back) {
      metrics_->failovers_drained->Increment();
      Log(LogLevel::kInfo, "failover",
          {{"job", job_id},
           {"document", doc},
           {"reason", "drained"},
           {"worker", worker->address},
           {"tokens_read", std::to_string(d.max_tokens_read)}});
      back_to_queue();
    } else if (status.error_code() == grpc::StatusCode::DATA_LOSS) {
      Log(LogLevel::kError, "checkpoint_refused",
          {{"job", job_id},
           {"document", doc},
           {"worker", worker->address},
           {"error", status.error_message()}});
      (void)store_->DeleteCheckpoints(job_id, index);
      back_to_queue();
    } else if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED && !got_output) {
      pool_->MarkFull(worker);
      d.status.mutable_stats()->set_attempts(d.status.stats().attempts() - 1);
      back_to_queue();
    } else if (!store_failed && !resume_broken &&
               (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                status.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                status.error_code() == grpc::StatusCode::OUT_OF_RANGE)) {
      Log(LogLevel::kError, "document_failed",
          {{"job", job_id},
           {"document", doc},
           {"worker", worker->address},
           {"code", std::to_string(status.error_code())},
           {"error", status.error_message()}});
      FinishDocLocked(*job, index, v1::DOCUMENT_STATE_FAILED,
                      absl::StrCat("worker ", worker->address, ": ", status.error_message()),
                      status.error_code());
    } else {
      if (!store_failed && !resume_broken) {
        pool_->MarkLost(worker);
        metrics_->failovers_worker_lost->Increment();
      }
      Log(LogLevel::kWarning, "failover",
          {{"job", job_id},
           {"document", doc},
           {"reason", "worker_lost"},
           {"worker", worker->address},
           {"code", std::to_string(status.error_code())},
           {"error", status.error_message()},
           {"tokens_read", std::to_string(d.max_tokens_read)},
           {"checkpoint_tokens", std::to_string(store_->GetCheckpoint(job_id, index)
                                                    .value_or(CommittedCheckpoint{})
                                                    .document_tokens)}});
      if (d.status.stats().attempts() >= options_.max_attempts) {
        FinishDocLocked(*job, index, v1::DOCUMENT_STATE_FAILED,
                        absl::StrCat("lost its worker ", d.status.stats().attempts(),
                                     " times; last: ", status.error_message()),
                        grpc::StatusCode::UNAVAILABLE);
      } else {
        back_to_queue();
      }
    }
  }
  pool_->Release(worker, run->placed_tokens);
  if (requeue) Enqueue(job_id, index, /*front=*/true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --active_runs_;
    runs_.erase(run);
  }
  runs_cv_.notify_all();
  cv_.notify_all();
}

}  // namespace longread::coordinator
