#include "services/worker/worker_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/block_archive_store.h"
#include "engine/job/document_session.h"
#include "engine/memory/cpu_backend.h"
#include "engine/memory/recording_archive.h"
#include "rocksdb/db.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/worker/checkpoint_codec.h"
#include "services/worker/job_options.h"

namespace longread::worker {

using services::Log;
using services::LogLevel;

namespace {

constexpr absl::Duration kRecentRateWindow = absl::Seconds(30);
// How long the worker waits, after its last message, for the coordinator to half-close.
constexpr absl::Duration kHalfCloseWait = absl::Seconds(10);

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  return static_cast<grpc::StatusCode>(static_cast<int>(code));
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()));
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

std::string RandomHex() {
  std::random_device rd;
  return absl::StrFormat("%08x%08x", rd(), rd());
}

}  // namespace

// The tokens, cancellation and end of a RunDocument call's input, filled by a reader thread
// while the document runs on the handler's thread.
class DocumentInput {
 public:
  DocumentInput(int64_t first_offset, int64_t total_tokens, int64_t max_buffered,
                int32_t vocab_size)
      : next_offset_(first_offset),
        total_(total_tokens),
        max_buffered_(max_buffered),
        vocab_size_(vocab_size) {}

  // Reader thread: until the stream ends or the document stops.
  void Pump(grpc::ServerReaderWriter<v1::RunDocumentOutput, v1::RunDocumentInput>* stream) {
    v1::RunDocumentInput in;
    while (stream->Read(&in)) {
      absl::MutexLock lock(&mu_);
      if (in.has_cancel()) {
        cancelled_ = true;
        cancel_reason_ = in.cancel().reason();
        continue;
      }
      if (!in.has_tokens()) {
        error_ = absl::InvalidArgumentError(
            "only token chunks and cancel may follow the assignment and its checkpoint");
        break;
      }
      const v1::TokenChunk& chunk = in.tokens();
      if (last_ || chunk.offset() != next_offset_ || next_offset_ + chunk.tokens_size() > total_) {
        error_ = absl::InvalidArgumentError(
            absl::StrCat("token chunk at offset ", chunk.offset(), " with ", chunk.tokens_size(),
                         " tokens; expected offset ", next_offset_, " of ", total_,
                         last_ ? " (after last)" : ""));
        break;
      }
      for (int32_t t : chunk.tokens()) {
        if (t < 0 || t >= vocab_size_) {
          error_ =
              absl::InvalidArgumentError(absl::StrCat("token id ", t, " out of the vocabulary"));
          break;
        }
      }
      if (!error_.ok()) break;
      next_offset_ += chunk.tokens_size();
      if (chunk.last() || next_offset_ == total_) {
        if (next_offset_ != total_) {
          error_ = absl::InvalidArgumentError(
              absl::StrCat("the last token chunk ends at ", next_offset_, " of ", total_));
          break;
        }
        last_ = true;
      }
      tokens_.insert(tokens_.end(), chunk.tokens().begin(), chunk.tokens().end());
      // Back-pressure: stop reading while the buffer is full.
      auto room = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopped_ || static_cast<int64_t>(tokens_.size()) - consumed_ < max_buffered_;
      };
      mu_.Await(absl::Condition(&room));
      if (stopped_) break;
    }
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

  // Document thread: the tokens not yet consumed (a copy: the reader may grow the buffer), up to
  // `max`; waits up to `wait` for some when there are none. `*end` is set when they reach the
  // end of the document.
  std::vector<int32_t> Available(int64_t max, absl::Duration wait, bool* end) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return static_cast<int64_t>(tokens_.size()) > consumed_ || last_ || closed_ || cancelled_ ||
             !error_.ok();
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), wait);
    const int64_t have = static_cast<int64_t>(tokens_.size()) - consumed_;
    const int64_t n = std::min(have, max);
    *end = last_ && n == have;
    return std::vector<int32_t>(tokens_.begin() + consumed_, tokens_.begin() + consumed_ + n);
  }

  void Consume(int64_t n) {
    absl::MutexLock lock(&mu_);
    consumed_ += n;
    if (consumed_ > (int64_t{1} << 16) && consumed_ * 2 > static_cast<int64_t>(tokens_.size())) {
      tokens_.erase(tokens_.begin(), tokens_.begin() + consumed_);
      consumed_ = 0;
    }
  }

  // Tells the reader to stop waiting for room (the document ended).
  void Stop() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }

  bool cancelled(std::string* reason) {
    absl::MutexLock lock(&mu_);
    if (cancelled_)
      *reason = cancel_reason_.empty() ? "cancelled by the coordinator" : cancel_reason_;
    return cancelled_;
  }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }
  // The input ended (half-close or a broken call) before the document's last token.
  bool ended_early() {
    absl::MutexLock lock(&mu_);
    return closed_ && !last_;
  }
  bool WaitClosed(absl::Duration wait) {
    absl::MutexLock lock(&mu_);
    auto closed = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closed_; };
    return mu_.AwaitWithTimeout(absl::Condition(&closed), wait);
  }

 private:
  absl::Mutex mu_;
  std::vector<int32_t> tokens_ ABSL_GUARDED_BY(mu_);
  int64_t consumed_ ABSL_GUARDED_BY(mu_) = 0;  // index into tokens_
  int64_t next_offset_ ABSL_GUARDED_BY(mu_);
  const int64_t total_;
  const int64_t max_buffered_;
  const int32_t vocab_size_;
  bool last_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::string cancel_reason_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

// One RunDocument call from its assignment on.
class DocumentRun {
 public:
  using Stream = grpc::ServerReaderWriter<v1::RunDocumentOutput, v1::RunDocumentInput>;
  DocumentRun(WorkerServiceImpl* worker, grpc::ServerContext* context, Stream* stream,
              const v1::DocumentAssignment& assignment)
      : worker_(worker), context_(context), stream_(stream), assignment_(assignment) {}
  ~DocumentRun() {
    session_.reset();
    CloseArchive();
    UpdateArchiveBytes();  // what this document held is released
  }

  grpc::Status Run();

 private:
  using Field = std::pair<std::string_view, std::string>;
  template <typename... F>
  void LogEvent(LogLevel level, std::string_view event, F&&... extra) {
    Log(level, event,
        {Field{"job_id", assignment_.job_id()},
         Field{"document_index", std::to_string(assignment_.document_index())},
         Field{"attempt", std::to_string(assignment_.attempt())}, std::forward<F>(extra)...});
  }
  absl::Status OpenArchive(const engine::DocumentJobOptions& options);
  void CloseArchive();
  void UpdateArchiveBytes();
  grpc::Status ReceiveCheckpoint(CheckpointAssembler* assembler);
  bool Write(const v1::RunDocumentOutput& out);
  absl::Status SendCheckpoint();
  grpc::Status HandBack(std::string_view reason);
  // Why the document must stop now (cancelled, stream gone, input error), or OK to go on.
  grpc::Status CheckStop();
  grpc::Status ReadDocument();
  grpc::Status AnswerDocument();
  grpc::Status SendFinished();

  WorkerServiceImpl* worker_;
  grpc::ServerContext* context_;
  Stream* stream_;
  const v1::DocumentAssignment assignment_;

  std::unique_ptr<cache::RocksDbBlockArchive> archive_;
  std::unique_ptr<engine::RecordingBlockArchive> recording_;
  std::string doc_id_;
  std::string archive_open_error_;  // recall was asked for and the archive could not open
  int64_t archive_bytes_reported_ = 0;
  int64_t memory_bytes_reported_ = 0;
  std::unique_ptr<engine::DocumentSession> session_;
  std::unique_ptr<DocumentInput> input_;
  bool stream_broken_ = false;
  int64_t head_dim_ = 0;

  int64_t sequence_ = 0;            // last checkpoint sent (or resumed from)
  int64_t checkpoint_tokens_ = -1;  // document tokens consumed at that checkpoint
  int64_t checkpoints_sent_ = 0, checkpoint_bytes_ = 0;
  double checkpoint_seconds_ = 0;
  double reading_since_checkpoint_ = 0;  // seconds of reading since the last checkpoint
  double read_seconds_ = 0;              // this attempt's
  int64_t attempt_first_token_ = 0;      // document tokens read before this attempt
  int64_t tokens_read_ = 0;              // document tokens read (all attempts)
  int64_t answer_bytes_ = 0;             // answer text generated so far
};

absl::Status DocumentRun::OpenArchive(const engine::DocumentJobOptions& options) {
  if (options.recall.blocks <= 0 || options.runner.memory.is_dense()) return absl::OkStatus();
  if (worker_->archive_db_ == nullptr) {
    return absl::UnavailableError("the cache directory is unusable");
  }
  const auto& c = worker_->model_.model->config();
  if (worker_->options_.archive_id) {
    doc_id_ = worker_->options_.archive_id();
  } else {
    doc_id_ = absl::StrCat("worker-", assignment_.job_id(), "-", assignment_.document_index(), "-",
                           assignment_.attempt(), "-", RandomHex());
  }
  std::replace(doc_id_.begin(), doc_id_.end(), '\0', '_');
  auto opened = worker_->archive_db_->OpenArchive(doc_id_, c.n_layers, c.n_kv_heads, c.head_dim,
                                                  worker_->options_.archive_max_bytes);
  if (!opened.ok()) return opened.status();
  archive_ = std::move(*opened);
  return absl::OkStatus();
}

void DocumentRun::UpdateArchiveBytes() {
  const int64_t now = archive_ != nullptr ? archive_->stored_bytes() : 0;
  worker_->UpdateArchiveBytes(now - archive_bytes_reported_);
  archive_bytes_reported_ = now;
  const int64_t memory = session_ != nullptr ? session_->runner().document().resident_bytes() : 0;
  worker_->UpdateMemoryBytes(memory - memory_bytes_reported_);
  memory_bytes_reported_ = memory;
}

void DocumentRun::CloseArchive() {
  recording_.reset();
  if (archive_ == nullptr) return;
  if (absl::Status deleted = worker_->archive_db_->DeleteArchive(&archive_); !deleted.ok()) {
    LogEvent(LogLevel::kWarning, "archive_not_deleted", Field{"error", deleted.ToString()});
  }
  UpdateArchiveBytes();
}

bool DocumentRun::Write(const v1::RunDocumentOutput& out) {
  if (stream_broken_) return false;
  if (!stream_->Write(out)) stream_broken_ = true;
  return !stream_broken_;
}

grpc::Status DocumentRun::ReceiveCheckpoint(CheckpointAssembler* assembler) {
  v1::RunDocumentInput in;
  while (!assembler->complete()) {
    if (!stream_->Read(&in)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the stream ended inside the checkpoint");
    }
    if (in.has_cancel()) return grpc::Status(grpc::StatusCode::CANCELLED, in.cancel().reason());
    if (!in.has_resume()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "resume_from_tokens > 0: checkpoint parts must come before any tokens");
    }
    if (absl::Status added = assembler->Add(in.resume()); !added.ok()) return ToGrpc(added);
  }
  return grpc::Status::OK;
}

absl::Status DocumentRun::SendCheckpoint() {
  const auto start = std::chrono::steady_clock::now();
  std::string record;
  int64_t document_tokens = 0;
  std::string archive_error;
  {
    // The snapshot (~145 MB at the default memory) is freed as soon as it is encoded.
    std::optional<FairLockGuard> device_lock;
    if (worker_->DeviceStateNeedsLock()) device_lock.emplace(&worker_->model_lock_);
    auto checkpoint = session_->Checkpoint();
    if (!checkpoint.ok()) return checkpoint.status();
    record = EncodeSnapshotRecord(checkpoint->memory);
    document_tokens = checkpoint->document_tokens_consumed;
    archive_error = checkpoint->archive_error;
  }
  std::vector<engine::ArchivedBlock> blocks;
  if (recording_ != nullptr) blocks = recording_->TakeRecorded();
  CheckpointStats stats;
  const bool sent = EmitCheckpoint(
      sequence_ + 1, document_tokens, archive_error, record, blocks, head_dim_,
      [&](const v1::CheckpointPart& part) {
        v1::RunDocumentOutput out;
        *out.mutable_checkpoint() = part;
        return Write(out);
      },
      &stats);
  if (!sent) return absl::CancelledError("the stream broke while sending a checkpoint");
  const double seconds = Seconds(std::chrono::steady_clock::now() - start);
  ++sequence_;
  checkpoint_tokens_ = document_tokens;
  ++checkpoints_sent_;
  checkpoint_bytes_ += stats.bytes;
  checkpoint_seconds_ += seconds;
  reading_since_checkpoint_ = 0;
  worker_->metrics_->checkpoint_seconds->Observe(seconds);
  worker_->metrics_->checkpoint_bytes->Increment(static_cast<double>(stats.bytes));
  LogEvent(LogLevel::kInfo, "checkpoint_sent", Field{"sequence", std::to_string(sequence_)},
           Field{"document_tokens", std::to_string(checkpoint_tokens_)},
           Field{"bytes", std::to_string(stats.bytes)},
           Field{"snapshot_bytes", std::to_string(stats.snapshot_bytes)},
           Field{"archive_blocks", std::to_string(stats.archive_blocks)},
           Field{"parts", std::to_string(stats.parts)},
           Field{"seconds", absl::StrFormat("%.4f", seconds)});
  return absl::OkStatus();
}

grpc::Status DocumentRun::HandBack(std::string_view reason) {
  v1::RunDocumentOutput out;
  out.mutable_handed_back()->set_reason(std::string(reason));
  out.mutable_handed_back()->set_checkpoint_sequence(sequence_);
  Write(out);
  LogEvent(LogLevel::kInfo, "document_handed_back", Field{"reason", std::string(reason)},
           Field{"checkpoint_sequence", std::to_string(sequence_)},
           Field{"resume_from_tokens", std::to_string(std::max<int64_t>(checkpoint_tokens_, 0))});
  return grpc::Status::OK;
}

grpc::Status DocumentRun::CheckStop() {
  std::string reason;
  if (input_->cancelled(&reason)) return grpc::Status(grpc::StatusCode::CANCELLED, reason);
  if (context_->IsCancelled() || stream_broken_) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
  }
  if (absl::Status error = input_->error(); !error.ok()) return ToGrpc(error);
  return grpc::Status::OK;
}

grpc::Status DocumentRun::ReadDocument() {
  const int64_t segment = std::max<int64_t>(1, session_->runner().config().segment_tokens);
  while (!session_->reading_done()) {
    if (grpc::Status stop = CheckStop(); !stop.ok()) return stop;
    if (worker_->draining()) {
      // Nothing read yet: the next worker starts where this one did, no checkpoint needed.
      if (session_->document_tokens_consumed() > std::max<int64_t>(checkpoint_tokens_, 0)) {
        if (absl::Status sent = SendCheckpoint(); !sent.ok()) return ToGrpc(sent);
      }
      return HandBack("draining");
    }
    bool end = false;
    // A segment's worth at most: copying the whole buffer each step would cost O(n^2).
    std::vector<int32_t> tokens = input_->Available(segment, absl::Milliseconds(100), &end);
    if (tokens.empty() && !end) {
      if (input_->ended_early() && !context_->IsCancelled()) {
        if (grpc::Status stop = CheckStop(); !stop.ok()) return stop;
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "the input ended before the document's last token");
      }
      continue;
    }
    const int64_t segments_before = session_->segments_read();
    absl::StatusOr<int64_t> consumed;
    double seconds = 0;  // the model's time, not the turn waited for (segment_seconds)
    {
      // Batched, the pass takes the model lock (SegmentBatcher), and `seconds` is the shared
      // pass's time: the turn waited for is then the wait for the pass to gather.
      std::optional<FairLockGuard> lock;
      if (worker_->batcher_ == nullptr) lock.emplace(&worker_->model_lock_);
      // A drain that began while this document queued for the model does not wait for its
      // segment too: the drain lasts one segment, not one per document in flight.
      if (worker_->draining()) continue;
      const auto start = std::chrono::steady_clock::now();
      consumed = session_->ReadStep(tokens, end);
      seconds = Seconds(std::chrono::steady_clock::now() - start);
    }
    if (!consumed.ok()) return ToGrpc(consumed.status());
    input_->Consume(*consumed);
    if (session_->segments_read() == segments_before) continue;  // kept as a partial segment
    // A segment was read: every token consumed so far has been read.
    const int64_t now_read = session_->reading_done() ? session_->document_tokens()
                                                      : session_->document_tokens_consumed();
    worker_->RecordTokensRead(now_read - tokens_read_);
    tokens_read_ = now_read;
    read_seconds_ += seconds;
    reading_since_checkpoint_ += seconds;
    worker_->metrics_->segment_seconds->Observe(seconds);
    UpdateArchiveBytes();
    v1::RunDocumentOutput out;
    v1::ReadProgress* progress = out.mutable_progress();
    progress->set_tokens_read(tokens_read_);
    progress->set_tokens_per_second(
        read_seconds_ > 0 ? static_cast<double>(tokens_read_ - attempt_first_token_) / read_seconds_
                          : 0);
    progress->set_segments(session_->segments_read());
    if (!Write(out)) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
    if (assignment_.checkpoint_seconds() >= 0 &&
        reading_since_checkpoint_ >= assignment_.checkpoint_seconds()) {
      if (absl::Status sent = SendCheckpoint(); !sent.ok()) return ToGrpc(sent);
    }
  }
  return grpc::Status::OK;
}

grpc::Status DocumentRun::AnswerDocument() {
  const auto start = std::chrono::steady_clock::now();
  {
    FairLockGuard lock(&worker_->model_lock_);
    if (absl::Status begun = session_->BeginAnswer(); !begun.ok()) return ToGrpc(begun);
  }
  const int64_t skip = assignment_.answer_bytes_streamed();
  while (!session_->answer_done()) {
    if (grpc::Status stop = CheckStop(); !stop.ok()) return stop;
    if (worker_->draining() &&
        absl::Now() + worker_->options_.answer_handback_margin > worker_->drain_deadline()) {
      return HandBack("draining while answering");
    }
    absl::StatusOr<engine::AnswerStep> step;
    {
      FairLockGuard lock(&worker_->model_lock_);
      const auto token_start = std::chrono::steady_clock::now();
      step = session_->NextToken();
      worker_->metrics_->decode_token_seconds->Observe(
          Seconds(std::chrono::steady_clock::now() - token_start));
    }
    if (!step.ok()) return ToGrpc(step.status());
    worker_->metrics_->common->tokens_generated().Increment();
    if (step->text.empty()) continue;
    const int64_t end = answer_bytes_ + static_cast<int64_t>(step->text.size());
    if (end > skip) {
      const size_t from = static_cast<size_t>(std::max<int64_t>(0, skip - answer_bytes_));
      v1::RunDocumentOutput out;
      out.mutable_answer()->set_text(step->text.substr(from));
      if (!Write(out)) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
    }
    answer_bytes_ = end;
  }
  worker_->metrics_->generation_seconds->Observe(Seconds(std::chrono::steady_clock::now() - start));
  return SendFinished();
}

grpc::Status DocumentRun::SendFinished() {
  const engine::DocumentJobResult& r = session_->result();
  v1::RunDocumentOutput out;
  v1::DocumentFinished* finished = out.mutable_finished();
  finished->set_answer(r.answer);
  v1::DocumentStats* stats = finished->mutable_stats();
  stats->set_document_tokens(r.document_tokens);
  stats->set_generated_tokens(r.generated_tokens);
  stats->set_invalid_utf8_sequences(assignment_.invalid_utf8_sequences());
  stats->set_recalled_slots(r.recalled_slots);
  stats->set_recall_error(r.recall_error.empty() ? archive_open_error_ : r.recall_error);
  stats->set_read_seconds(read_seconds_);
  stats->set_recall_seconds(r.recall_seconds);
  stats->set_generate_seconds(r.generate_seconds);
  stats->set_attempts(1);
  stats->set_archive_bytes(archive_ != nullptr ? archive_->stored_bytes() : 0);
  finished->set_checkpoints(checkpoints_sent_);
  finished->set_checkpoint_bytes(checkpoint_bytes_);
  finished->set_checkpoint_seconds(checkpoint_seconds_);
  finished->set_archive_bytes(archive_ != nullptr ? archive_->stored_bytes() : 0);
  if (!Write(out)) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
  LogEvent(LogLevel::kInfo, "document_finished",
           Field{"document_tokens", std::to_string(r.document_tokens)},
           Field{"read_seconds", absl::StrFormat("%.3f", read_seconds_)},
           Field{"generated_tokens", std::to_string(r.generated_tokens)},
           Field{"generate_seconds", absl::StrFormat("%.3f", r.generate_seconds)},
           Field{"checkpoints", std::to_string(checkpoints_sent_)},
           Field{"checkpoint_bytes", std::to_string(checkpoint_bytes_)},
           Field{"checkpoint_seconds", absl::StrFormat("%.4f", checkpoint_seconds_)});
  return grpc::Status::OK;
}

grpc::Status DocumentRun::Run() {
  auto options = ToDocumentJobOptions(assignment_);
  if (!options.ok()) return ToGrpc(options.status());
  if (assignment_.total_tokens() <= 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "total_tokens must be > 0");
  }
  if (assignment_.resume_from_tokens() < 0 ||
      assignment_.resume_from_tokens() > assignment_.total_tokens()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "resume_from_tokens out of range");
  }
  head_dim_ = worker_->model_.model->config().head_dim;
  std::optional<CheckpointAssembler> resume;
  if (assignment_.resume_from_tokens() > 0) {
    resume.emplace(head_dim_);
    if (grpc::Status received = ReceiveCheckpoint(&*resume); !received.ok()) {
      // A malformed block: the checkpoint is unusable, not the call.
      return received.error_code() == grpc::StatusCode::INVALID_ARGUMENT
                 ? grpc::Status(grpc::StatusCode::DATA_LOSS, received.error_message())
                 : received;
    }
  }
  if (absl::Status opened = OpenArchive(*options); !opened.ok()) {
    // The answer goes on without recall (as in `longread run`), and says why.
    archive_open_error_ = absl::StrCat("archive unusable: ", opened.message());
    LogEvent(LogLevel::kWarning, "recall_disabled", Field{"error", opened.ToString()});
  }
  std::optional<engine::SessionCheckpoint> checkpoint;
  if (resume.has_value()) {
    auto decoded = resume->Checkpoint();
    if (!decoded.ok()) return ToGrpc(decoded.status());
    checkpoint = std::move(*decoded);
    if (archive_ != nullptr) {
      if (absl::Status replayed = engine::ReplayBlocks(resume->blocks(), archive_.get());
          !replayed.ok()) {
        return ToGrpc(replayed);
      }
    }
    resume->blocks().clear();
    sequence_ = resume->sequence();
    checkpoint_tokens_ = checkpoint->document_tokens_consumed;
  }
  if (archive_ != nullptr && assignment_.checkpoint_seconds() < 0) {
    options->archive = archive_.get();  // no checkpoints: nothing to record for one
  } else if (archive_ != nullptr) {
    recording_ = std::make_unique<engine::RecordingBlockArchive>(archive_.get());
    options->archive = recording_.get();
  }
  {
    FairLockGuard lock(&worker_->model_lock_);
    auto session = engine::DocumentSession::Create(
        *worker_->model_.backend, *worker_->model_.tokenizer, *options, worker_->model_.scorer,
        worker_->model_.pool, assignment_.total_tokens());
    if (!session.ok()) return ToGrpc(session.status());
    session_ = std::move(*session);
    if (worker_->batcher_ != nullptr) session_->set_batcher(worker_->batcher_.get());
  }
  if (checkpoint.has_value()) {
    // The model matched (Admit): a checkpoint that does not fit these options or this point of
    // the document is unusable, and the coordinator drops it on DATA_LOSS.
    std::optional<FairLockGuard> device_lock;
    if (worker_->DeviceStateNeedsLock()) device_lock.emplace(&worker_->model_lock_);
    if (absl::Status restored = session_->Restore(*checkpoint); !restored.ok()) {
      return grpc::Status(grpc::StatusCode::DATA_LOSS,
                          absl::StrCat("checkpoint refused: ", restored.message()));
    }
    if (session_->document_tokens_consumed() != assignment_.resume_from_tokens()) {
      return grpc::Status(grpc::StatusCode::DATA_LOSS,
                          absl::StrCat("the checkpoint resumes at document token ",
                                       session_->document_tokens_consumed(), ", the assignment at ",
                                       assignment_.resume_from_tokens()));
    }
    checkpoint.reset();
  }
  attempt_first_token_ = tokens_read_ = session_->document_tokens_consumed();
  input_ = std::make_unique<DocumentInput>(
      session_->document_tokens_consumed(), assignment_.total_tokens(),
      worker_->options_.max_buffered_tokens, worker_->model_.model->config().vocab_size);
  LogEvent(LogLevel::kInfo, "document_started",
           Field{"total_tokens", std::to_string(assignment_.total_tokens())},
           Field{"resume_from_tokens", std::to_string(assignment_.resume_from_tokens())},
           Field{"resume_sequence", std::to_string(sequence_)},
           Field{"recall", archive_ != nullptr ? "on" : "off"});
  std::thread reader([this] { input_->Pump(stream_); });
  grpc::Status status = ReadDocument();
  // OK with reading unfinished: handed back while draining.
  if (status.ok() && session_->reading_done()) status = AnswerDocument();
  input_->Stop();
  if (status.ok()) {
    // The coordinator half-closes once it has read our last message; then the reader ends.
    if (!input_->WaitClosed(kHalfCloseWait)) context_->TryCancel();
  } else {
    context_->TryCancel();
  }
  reader.join();
  if (!status.ok()) {
    LogEvent(
        status.error_code() == grpc::StatusCode::CANCELLED ? LogLevel::kInfo : LogLevel::kWarning,
        "document_stopped", Field{"code", std::string(services::GrpcCodeName(status.error_code()))},
        Field{"error", status.error_message()}, Field{"tokens_read", std::to_string(tokens_read_)});
  }
  return status;
}

WorkerServiceImpl::WorkerServiceImpl(WorkerModel model, WorkerOptions options,
                                     WorkerMetrics* metrics)
    : model_(std::move(model)), options_(std::move(options)), metrics_(metrics) {}

WorkerServiceImpl::~WorkerServiceImpl() = default;

absl::StatusOr<std::unique_ptr<WorkerServiceImpl>> WorkerServiceImpl::Create(
    WorkerModel model, WorkerOptions options, WorkerMetrics* metrics) {
  if (model.model == nullptr || model.tokenizer == nullptr || metrics == nullptr) {
    return absl::InvalidArgumentError("worker: model, tokenizer and metrics are required");
  }
  if (options.capacity < 1) return absl::InvalidArgumentError("worker: capacity must be >= 1");
  std::unique_ptr<WorkerServiceImpl> worker(
      new WorkerServiceImpl(std::move(model), std::move(options), metrics));
  if (worker->model_.backend == nullptr) {
    worker->own_backend_ = std::make_unique<engine::CpuReadingBackend>(worker->model_.model);
    worker->model_.backend = worker->own_backend_.get();
  }
  if (worker->options_.batch_documents > 1) {
    WorkerServiceImpl* w = worker.get();
    w->batcher_ = std::make_unique<engine::SegmentBatcher>(
        w->model_.backend, w->options_.batch_documents,
        [w](std::span<const engine::SegmentRead> reads) {
          FairLockGuard lock(&w->model_lock_);
          w->metrics_->read_passes->Increment();
          w->metrics_->read_pass_segments->Increment(static_cast<double>(reads.size()));
          return w->model_.backend->ReadSegments(reads);
        });
  }
  worker->model_bytes_ = worker->model_.backend->weight_bytes();
  metrics->capacity_documents->Set(worker->options_.capacity);
  metrics->device_memory_bytes->Set(static_cast<double>(worker->model_bytes_));
  if (worker->options_.archive_db != nullptr) {
    worker->archive_db_ = worker->options_.archive_db;
  } else if (!worker->options_.cache_dir.empty()) {
    // The database belongs to this process (RocksDB's lock): every archive in it is a dead
    // worker's.
    cache::ArchiveDatabaseOptions database_options;
    database_options.cache_dir = worker->options_.cache_dir;
    database_options.name = "worker-db";
    database_options.orphan_prefix = "";
    auto db = cache::ArchiveDatabase::Open(database_options);
    if (!db.ok()) {
      Log(LogLevel::kWarning, "archive_database_unusable",
          {{"path", database_options.cache_dir + "/" + database_options.name},
           {"error", db.status().ToString()}});
    } else {
      worker->own_db_ = std::move(*db);
      worker->archive_db_ = worker->own_db_.get();
      if (!worker->own_db_->moved_aside_to().empty()) {
        Log(LogLevel::kWarning, "archive_database_damaged",
            {{"moved_to", worker->own_db_->moved_aside_to()}});
      }
      if (!worker->own_db_->gc_status().ok()) {
        Log(LogLevel::kWarning, "stale_archives_not_deleted",
            {{"error", worker->own_db_->gc_status().ToString()}});
      }
      if (worker->own_db_->collected() > 0) {
        Log(LogLevel::kInfo, "stale_archives_deleted",
            {{"count", std::to_string(worker->own_db_->collected())}});
      }
      worker->UpdateDatabaseSize();
    }
  }
  return worker;
}

grpc::Status WorkerServiceImpl::Admit(const v1::DocumentAssignment& assignment) {
  if (assignment.model_fingerprint() != model_.model->fingerprint()) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("model mismatch: the coordinator's model is '", assignment.model_fingerprint(),
                     "', this worker's '", model_.model->fingerprint(), "'"));
  }
  absl::MutexLock lock(&mu_);
  if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker is draining");
  if (in_flight_ >= options_.capacity) {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("the worker is at capacity (", options_.capacity, " documents)"));
  }
  ++in_flight_;
  metrics_->documents_in_flight->Set(in_flight_);
  return grpc::Status::OK;
}

void WorkerServiceImpl::Release() {
  bool idle = false;
  {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    metrics_->documents_in_flight->Set(in_flight_);
    idle = in_flight_ == 0;
  }
  // Range deletions keep their disk space until a compaction; with no document left it only
  // reads what little remains.
  if (idle && own_db_ != nullptr) {
    (void)own_db_->Compact();
    UpdateDatabaseSize();
  }
}

grpc::Status WorkerServiceImpl::RunDocument(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::RunDocumentOutput, v1::RunDocumentInput>* stream) {
  v1::RunDocumentInput first;
  if (!stream->Read(&first)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no assignment");
  }
  if (!first.has_assignment()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first message must be the assignment");
  }
  if (grpc::Status admitted = Admit(first.assignment()); !admitted.ok()) {
    Log(LogLevel::kInfo, "document_refused",
        {{"job_id", first.assignment().job_id()},
         {"document_index", std::to_string(first.assignment().document_index())},
         {"attempt", std::to_string(first.assignment().attempt())},
         {"code", std::string(services::GrpcCodeName(admitted.error_code()))},
         {"error", admitted.error_message()}});
    return admitted;
  }
  grpc::Status status;
  {
    DocumentRun run(this, context, stream, first.assignment());
    status = run.Run();
  }
  Release();
  return status;
}

grpc::Status WorkerServiceImpl::GetLoad(grpc::ServerContext*, const v1::GetLoadRequest*,
                                        v1::WorkerLoad* load) {
  absl::MutexLock lock(&mu_);
  load->set_capacity(options_.capacity);
  load->set_in_flight(in_flight_);
  load->set_draining(draining_);
  load->set_model_fingerprint(model_.model->fingerprint());
  load->set_device(options_.device);
  const absl::Time now = absl::Now();
  while (!recent_reads_.empty() && recent_reads_.front().first < now - kRecentRateWindow) {
    recent_reads_.pop_front();
  }
  int64_t tokens = 0;
  for (const auto& [when, n] : recent_reads_) tokens += n;
  load->set_tokens_per_second(static_cast<double>(tokens) /
                              absl::ToDoubleSeconds(kRecentRateWindow));
  return grpc::Status::OK;
}

void WorkerServiceImpl::RecordTokensRead(int64_t tokens) {
  if (tokens <= 0) return;
  metrics_->common->tokens_read().Increment(static_cast<double>(tokens));
  absl::MutexLock lock(&mu_);
  recent_reads_.emplace_back(absl::Now(), tokens);
  if (recent_reads_.size() > 100000) recent_reads_.pop_front();
}

void WorkerServiceImpl::UpdateArchiveBytes(int64_t delta) {
  if (delta == 0) return;
  absl::MutexLock lock(&mu_);
  archive_bytes_ += delta;
  metrics_->archive_bytes->Set(static_cast<double>(archive_bytes_));
}

void WorkerServiceImpl::UpdateMemoryBytes(int64_t delta) {
  if (delta == 0) return;
  absl::MutexLock lock(&mu_);
  memory_bytes_ += delta;
  metrics_->device_memory_bytes->Set(static_cast<double>(model_bytes_ + memory_bytes_));
}

void WorkerServiceImpl::UpdateDatabaseSize() {
  if (archive_db_ == nullptr) return;
  uint64_t sst = 0, mem = 0;
  archive_db_->db()->db()->GetAggregatedIntProperty("rocksdb.total-sst-files-size", &sst);
  archive_db_->db()->db()->GetAggregatedIntProperty("rocksdb.cur-size-all-mem-tables", &mem);
  metrics_->common->rocksdb_size_bytes().Set(static_cast<double>(sst + mem));
}

void WorkerServiceImpl::StartDrain(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  drain_deadline_ = deadline;
}

bool WorkerServiceImpl::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

absl::Time WorkerServiceImpl::drain_deadline() const {
  absl::MutexLock lock(&mu_);
  return drain_deadline_;
}

int32_t WorkerServiceImpl::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

bool WorkerServiceImpl::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

}  // namespace longread::worker
