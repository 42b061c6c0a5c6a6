#include "services/coordinator/job_service.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "services/common/log.h"
#include "services/coordinator/document_ingest.h"

namespace longread::coordinator {
namespace fs = std::filesystem;

using services::Log;
using services::LogLevel;
using services::Role;

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// A reactor that only reports an error.
class FailedWatch : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  explicit FailedWatch(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// Streams a job's events from an offset: each event is read from the log when the previous one
// has been sent, so memory per watcher is one event whatever the client's speed.
class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent>, public JobWatcher {
 public:
  WatchReactor(Coordinator* coordinator, std::shared_ptr<JobRuntime> job, int64_t from)
      : coordinator_(coordinator), job_(std::move(job)), next_(from) {
    coordinator_->AddWatcher(*job_, this);
    Wake();
  }

  void Wake() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (writing_ || done_) return;
    const bool finished = job_->finished.load();
    const int64_t count = job_->events.load();
    if (next_ < count) {
      auto event = coordinator_->store()->GetEvent(job_->header.job_id(), next_);
      if (!event.ok()) {
        done_ = true;
        lock.unlock();
        Finish(grpc::Status(grpc::StatusCode::INTERNAL,
                            absl::StrCat("event ", next_, ": ", event.status().message())));
        return;
      }
      event_ = std::move(*event);
      ++next_;
      writing_ = true;
      lock.unlock();
      StartWrite(&event_);
      return;
    }
    if (finished) {
      done_ = true;
      lock.unlock();
      Finish(grpc::Status::OK);
    }
  }

  void OnWriteDone(bool ok) override {
    if (ok) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        writing_ = false;
      }
      Wake();
      return;
    }
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      finish = !done_;
      done_ = true;
    }
    if (finish) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client gone"));
  }

  void OnCancel() override {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!done_ && !writing_) {
        done_ = true;
        finish = true;
      }
    }
    if (finish) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client gone"));
  }

  void OnDone() override {
    coordinator_->RemoveWatcher(*job_, this);
    delete this;
  }

 private:
  Coordinator* coordinator_;
  std::shared_ptr<JobRuntime> job_;
  std::mutex mu_;
  int64_t next_;
  bool writing_ = false;
  bool done_ = false;
  v1::JobEvent event_;
};

}  // namespace

absl::Status ResolveJobOptions(v1::JobOptions* o) {
  if (o->memory_k() < 0 || o->window() < 0 || o->sinks() < 0 || o->segment_tokens() < 0 ||
      o->block_tokens() < 0 || (o->has_recall_blocks() && o->recall_blocks() < 0) ||
      o->max_new_tokens() < 0 || o->temperature() < 0 || o->top_p() < 0 || o->top_p() > 1) {
    return absl::InvalidArgumentError("job options must not be negative (top_p in [0, 1])");
  }
  if (o->max_new_tokens() > 65536 || o->segment_tokens() > (int64_t{1} << 20) ||
      o->memory_k() > (int64_t{1} << 24) || o->window() > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError("job options too large");
  }
  // The defaults of `longread run` (README.md).
  // memory_k, sinks and top_p have meaningful zeros: only an unset field takes the default.
  if (!o->has_memory_k()) o->set_memory_k(2048);
  if (o->window() == 0) o->set_window(1024);
  if (!o->has_sinks()) o->set_sinks(4);
  if (o->segment_tokens() == 0) o->set_segment_tokens(2048);
  if (o->block_tokens() == 0) o->set_block_tokens(32);
  if (!o->has_recall_blocks()) o->set_recall_blocks(4);
  if (o->max_new_tokens() == 0) o->set_max_new_tokens(256);
  if (!o->has_top_p()) o->set_top_p(1);
  return absl::OkStatus();
}

absl::Status ValidateTask(v1::Task* task) {
  switch (task->kind()) {
    case v1::TASK_KIND_UNSPECIFIED:
      task->set_kind(v1::TASK_KIND_SUMMARIZE);
      return absl::OkStatus();
    case v1::TASK_KIND_SUMMARIZE:
    case v1::TASK_KIND_ANALYZE_CODE:
      return absl::OkStatus();
    case v1::TASK_KIND_QUESTION:
      if (task->question().empty()) {
        return absl::InvalidArgumentError("the question task needs task.question");
      }
      return absl::OkStatus();
    case v1::TASK_KIND_CUSTOM:
      if (task->instruction().empty()) {
        return absl::InvalidArgumentError("the custom task needs task.instruction");
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError("unknown task kind");
  }
}

JobServiceImpl::JobServiceImpl(Coordinator* coordinator, const engine::Tokenizer* tokenizer,
                               const services::TokenAuthenticator* auth, JobServiceOptions options)
    : coordinator_(coordinator), tokenizer_(tokenizer), auth_(auth), options_(std::move(options)) {}

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* context,
                                       grpc::ServerReader<v1::SubmitJobRequest>* reader,
                                       v1::SubmitJobResponse* response) {
  services::Caller caller;
  if (grpc::Status s = auth_->Authorize(*context, Role::kWrite, &caller); !s.ok()) return s;
  auto exhausted = [&](const absl::Status& s) {
    context->AddTrailingMetadata("retry-after-ms",
                                 std::to_string(coordinator_->options().retry_after_ms));
    return ToGrpc(s);
  };
  v1::SubmitJobRequest request;
  if (!reader->Read(&request)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty SubmitJob stream");
  }
  if (!request.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first SubmitJob message must be the header");
  }
  v1::JobHeader header = std::move(*request.mutable_header());
  if (absl::Status s = ValidateTask(header.mutable_task()); !s.ok()) return ToGrpc(s);
  if (absl::Status s = ResolveJobOptions(header.mutable_options()); !s.ok()) return ToGrpc(s);
  // The clock starts now, before the documents arrive: the caller's limit covers the whole job.
  std::optional<google::protobuf::Timestamp> deadline;
  if (header.has_timeout()) {
    const google::protobuf::Duration& t = header.timeout();
    constexpr int64_t kMaxTimeoutSeconds = int64_t{10} * 366 * 24 * 3600;
    if (t.seconds() < 0 || t.nanos() < 0 || t.nanos() > 999999999 ||
        t.seconds() > kMaxTimeoutSeconds) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "timeout must be between 0 and 10 years");
    }
    if (t.seconds() > 0 || t.nanos() > 0) {
      deadline = google::protobuf::util::TimeUtil::GetCurrentTime() + t;
    }
  }
  std::string idempotency;
  if (!header.idempotency_key().empty()) {
    if (header.idempotency_key().size() > 256) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "idempotency_key over 256 bytes");
    }
    idempotency = absl::StrCat(caller.principal, "/", header.idempotency_key());
    auto found = coordinator_->store()->FindIdempotencyKey(idempotency);
    if (!found.ok()) return ToGrpc(found.status());
    if (found->has_value()) {
      if (auto job = coordinator_->FindJob(**found); job != nullptr) {
        response->set_job_id(**found);
        response->set_deduplicated(true);
        *response->mutable_job() = coordinator_->Snapshot(*job, true);
        return grpc::Status::OK;
      }
    }
  }
  if (absl::Status s = coordinator_->CheckQueueRoom(1); !s.ok()) return exhausted(s);

  const std::string job_id = coordinator_->NewJobId();
  JobStore* store = coordinator_->store();
  const CoordinatorOptions& limits = coordinator_->options();
  int64_t job_bytes_left = limits.max_job_bytes;
  std::vector<v1::DocumentStatus> documents;
  std::optional<DocumentIngest> inline_text;  // the current inline text document
  std::optional<fs::path> spool;              // the current inline tar archive
  std::ofstream spool_out;
  int64_t spool_bytes = 0;
  std::string spool_name;

  auto make_ingest = [&](const std::string& name) {
    return DocumentIngest(
        *tokenizer_, store, job_id, static_cast<int32_t>(documents.size()), name,
        IngestLimits{limits.max_document_bytes, &job_bytes_left, options_.accept_binary});
  };
  auto add_document = [&](const DocumentIngest& ingest) {
    v1::DocumentStatus d;
    d.set_index(static_cast<int32_t>(documents.size()));
    d.set_name(ingest.name());
    d.set_state(v1::DOCUMENT_STATE_QUEUED);
    d.set_total_tokens(ingest.tokens());
    d.mutable_stats()->set_document_tokens(ingest.tokens());
    d.mutable_stats()->set_invalid_utf8_sequences(ingest.invalid_utf8());
    if (ingest.invalid_utf8() > 0) {
      Log(LogLevel::kWarning, "invalid_utf8_replaced",
          {{"job", job_id},
           {"document", std::to_string(d.index())},
           {"sequences", std::to_string(ingest.invalid_utf8())}});
    }
    documents.push_back(std::move(d));
  };
  auto ingest_repository = [&](const std::string& name, const fs::path& path, bool is_tar,
                               const fs::path& root) -> absl::Status {
    DocumentIngest ingest = make_ingest(name);
    auto sink = [&](std::string_view bytes) { return ingest.Append(bytes); };
    auto stats = is_tar ? StreamTar(path, sink) : StreamDirectory(path, root, sink);
    if (!stats.ok()) return stats.status();
    if (stats->files == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("repository \"", name, "\" has no text files"));
    }
    if (absl::Status s = ingest.Finish(); !s.ok()) return s;
    Log(LogLevel::kInfo, "repository_read",
        {{"job", job_id},
         {"document", std::to_string(documents.size())},
         {"files", std::to_string(stats->files)},
         {"skipped_binary", std::to_string(stats->skipped_binary)},
         {"skipped_links", std::to_string(stats->skipped_links)}});
    add_document(ingest);
    return absl::OkStatus();
  };
  // Ends the current inline document, if any.
  auto close_current = [&]() -> absl::Status {
    if (inline_text) {
      absl::Status s = inline_text->Finish();
      if (s.ok()) add_document(*inline_text);
      inline_text.reset();
      return s;
    }
    if (spool) {
      spool_out.close();
      absl::Status s = spool_out ? ingest_repository(spool_name, *spool, true, {})
                                 : absl::UnavailableError("cannot spool the archive");
      std::error_code ec;
      fs::remove(*spool, ec);
      spool.reset();
      return s;
    }
    return absl::OkStatus();
  };
  auto handle = [&](v1::SubmitJobRequest& r) -> absl::Status {
    switch (r.part_case()) {
      case v1::SubmitJobRequest::kHeader:
        return absl::InvalidArgumentError("a SubmitJob stream has exactly one header");
      case v1::SubmitJobRequest::kDocument: {
        if (absl::Status s = close_current(); !s.ok()) return s;
        const v1::DocumentStart& start = r.document();
        const std::string name = !start.name().empty() ? start.name()
                                 : !start.server_path().empty()
                                     ? start.server_path()
                                     : absl::StrCat("document-", documents.size());
        if (start.server_path().empty()) {
          if (start.format() == v1::DOCUMENT_FORMAT_REPOSITORY) {
            std::error_code ec;
            fs::create_directories(options_.spool_dir, ec);
            spool =
                fs::path(options_.spool_dir) / absl::StrCat(job_id, "-", documents.size(), ".tar");
            spool_out.open(*spool, std::ios::binary | std::ios::trunc);
            spool_bytes = 0;
            spool_name = name;
            if (!spool_out) return absl::UnavailableError("cannot spool the archive");
          } else {
            inline_text.emplace(make_ingest(name));
          }
          return absl::OkStatus();
        }
        auto path = ResolveServerPath(start.server_path(), options_.path_roots);
        if (!path.ok()) return path.status();
        std::error_code ec;
        if (fs::is_directory(*path, ec)) {
          if (start.format() == v1::DOCUMENT_FORMAT_TEXT) {
            return absl::InvalidArgumentError(
                absl::StrCat("\"", start.server_path(), "\" is a directory, not a text file"));
          }
          fs::path root = *path;
          for (const std::string& r : options_.path_roots) {
            const fs::path real_root = fs::canonical(r, ec);
            auto [end, it] =
                std::mismatch(real_root.begin(), real_root.end(), path->begin(), path->end());
            if (!ec && end == real_root.end()) root = real_root;
          }
          return ingest_repository(name, *path, false, root);
        }
        if (start.format() == v1::DOCUMENT_FORMAT_REPOSITORY) {
          return ingest_repository(name, *path, true, {});
        }
        DocumentIngest ingest = make_ingest(name);
        if (absl::Status s =
                StreamFile(*path, [&](std::string_view b) { return ingest.Append(b); });
            !s.ok()) {
          return s;
        }
        if (absl::Status s = ingest.Finish(); !s.ok()) return s;
        add_document(ingest);
        return absl::OkStatus();
      }
      case v1::SubmitJobRequest::kChunk: {
        if (inline_text) return inline_text->Append(r.chunk());
        if (spool) {
          spool_bytes += static_cast<int64_t>(r.chunk().size());
          job_bytes_left -= static_cast<int64_t>(r.chunk().size());
          if (spool_bytes > limits.max_document_bytes) {
            return absl::OutOfRangeError(absl::StrCat("archive \"", spool_name,
                                                      "\" is over the limit of ",
                                                      limits.max_document_bytes, " bytes"));
          }
          if (job_bytes_left < 0) {
            return absl::OutOfRangeError("the job is over the limit of --max-job-bytes");
          }
          spool_out.write(r.chunk().data(), static_cast<std::streamsize>(r.chunk().size()));
          return absl::OkStatus();
        }
        return absl::InvalidArgumentError(
            "a chunk must follow an inline DocumentStart (no document is open)");
      }
      default:
        return absl::InvalidArgumentError("an empty SubmitJob message");
    }
  };

  absl::Status status;
  while (status.ok() && reader->Read(&request)) status = handle(request);
  if (status.ok() && context->IsCancelled()) {
    status = absl::CancelledError("the client went away before the end of the stream");
  }
  if (status.ok()) status = close_current();
  if (spool) {
    std::error_code ec;
    fs::remove(*spool, ec);
  }
  if (status.ok() && documents.empty())
    status = absl::InvalidArgumentError("a job needs documents");
  if (status.ok()) {
    status = coordinator_->CheckQueueRoom(static_cast<int64_t>(documents.size()));
  }
  if (!status.ok()) {
    (void)store->DeleteJob(job_id);
    Log(LogLevel::kInfo, "job_refused",
        {{"job", job_id},
         {"caller", caller.principal},
         {"code", std::to_string(static_cast<int>(status.code()))},
         {"error", std::string(status.message())}});
    if (status.code() == absl::StatusCode::kResourceExhausted) return exhausted(status);
    return ToGrpc(status);
  }
  v1::Job job;
  job.set_job_id(job_id);
  job.set_name(header.name());
  *job.mutable_task() = header.task();
  *job.mutable_options() = header.options();
  if (deadline.has_value()) *job.mutable_deadline() = *deadline;
  auto accepted = coordinator_->AcceptJob(std::move(job), std::move(documents), idempotency);
  if (!accepted.ok()) {
    (void)store->DeleteJob(job_id);
    return ToGrpc(accepted.status());
  }
  response->set_job_id(job_id);
  *response->mutable_job() = std::move(*accepted);
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::JobEvent>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  if (grpc::Status s = auth_->Authorize(*context, Role::kRead, nullptr); !s.ok()) {
    return new FailedWatch(s);
  }
  auto job = coordinator_->FindJob(request->job_id());
  if (job == nullptr) {
    return new FailedWatch(
        grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("no job ", request->job_id())));
  }
  if (request->from_offset() < 0 || request->from_offset() > job->events.load()) {
    return new FailedWatch(
        grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                     absl::StrCat("from_offset must be in [0, ", job->events.load(), "]")));
  }
  return new WatchReactor(coordinator_, std::move(job), request->from_offset());
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                                    v1::Job* response) {
  if (grpc::Status s = auth_->Authorize(*context, Role::kRead, nullptr); !s.ok()) return s;
  auto job = coordinator_->FindJob(request->job_id());
  if (job == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("no job ", request->job_id()));
  }
  *response = coordinator_->Snapshot(*job, true);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* context,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  if (grpc::Status s = auth_->Authorize(*context, Role::kRead, nullptr); !s.ok()) return s;
  if (request->page_size() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size must not be negative");
  }
  const int limit = request->page_size() == 0 ? 50 : std::min(request->page_size(), 1000);
  std::string next;
  for (v1::Job& job : coordinator_->List(request->page_token(), limit, request->state(), &next)) {
    *response->add_jobs() = std::move(job);
  }
  response->set_next_page_token(next);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request, v1::Job* response) {
  if (grpc::Status s = auth_->Authorize(*context, Role::kWrite, nullptr); !s.ok()) return s;
  auto job = coordinator_->Cancel(request->job_id());
  if (!job.ok()) return ToGrpc(job.status());
  *response = std::move(*job);
  return grpc::Status::OK;
}

}  // namespace longread::coordinator
