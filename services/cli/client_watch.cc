// `longread watch` (and `submit --watch`): follows a job's event stream, re-attaching from the
// last offset seen when the stream drops (a restarted coordinator, a network cut).
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "services/cli/client_common.h"
#include "services/cli/progress_bar.h"

namespace longread::services::client {
namespace {

// Answers go to stdout whole and in order of their start: the first document whose answer
// starts streams live; the others are held until it is done. With several documents each
// answer follows a "== NAME ==" line.
class AnswerPrinter {
 public:
  AnswerPrinter(std::vector<std::string> names) : names_(std::move(names)) {}

  void Delta(int index, const std::string& text) {
    Doc& d = docs_[index];
    if (d.printed) return;
    d.pending += text;
    if (current_ < 0) Start(index);
    if (current_ == index) Flush(d);
  }

  void Done(int index) {
    docs_[index].done = true;
    if (current_ == index) {
      End(index);
      current_ = -1;
    }
    if (current_ >= 0) return;
    // Finished answers first, then the next one still streaming.
    for (auto& [i, d] : docs_) {
      if (d.done && !d.printed && !d.pending.empty()) {
        Start(i);
        Flush(d);
        End(i);
      }
    }
    for (auto& [i, d] : docs_) {
      if (!d.printed && !d.pending.empty()) {
        Start(i);
        Flush(d);
        current_ = i;
        break;
      }
    }
  }

  void Finish() {
    if (current_ >= 0) End(current_);
    current_ = -1;
    for (auto& [i, d] : docs_) {
      if (!d.printed && !d.pending.empty()) {
        Start(i);
        Flush(d);
        End(i);
      }
    }
  }

 private:
  struct Doc {
    std::string pending;
    bool done = false;
    bool started = false;
    bool printed = false;
  };
  void Start(int index) {
    current_ = index;
    Doc& d = docs_[index];
    if (d.started) return;
    d.started = true;
    if (names_.size() > 1) {
      const std::string name =
          index < static_cast<int>(names_.size()) ? names_[index] : absl::StrCat(index);
      std::printf("%s== %s ==\n", any_printed_ ? "\n" : "", name.c_str());
    }
    any_printed_ = true;
  }
  void Flush(Doc& d) {
    std::fwrite(d.pending.data(), 1, d.pending.size(), stdout);
    std::fflush(stdout);
    d.pending.clear();
  }
  void End(int index) {
    Doc& d = docs_[index];
    Flush(d);
    d.printed = true;
    std::printf("\n");
    std::fflush(stdout);
  }
  std::vector<std::string> names_;
  std::map<int, Doc> docs_;
  int current_ = -1;
  bool any_printed_ = false;
};

bool Retryable(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:  // ended without the job's end: the server went away cleanly
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return true;
    default:
      return false;
  }
}

}  // namespace

int WatchJob(const Connection& connection, const std::string& job_id, const WatchOptions& options) {
  using Clock = std::chrono::steady_clock;
  const bool show = !options.jsonl && !options.quiet;
  std::vector<std::string> names;
  std::map<int, std::unique_ptr<ProgressBar>> bars;
  std::unique_ptr<AnswerPrinter> answers;
  int64_t next = options.from_offset;
  bool names_known = false;
  bool ended = false;
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  auto last_contact = Clock::now();
  double backoff = 0.2;
  int attaches = 0;

  while (true) {
    // The document names, for bars and headers; also the first check that the job exists.
    if (!names_known && !options.jsonl) {
      grpc::ClientContext context;
      connection.Prepare(&context);
      v1::GetJobRequest request;
      request.set_job_id(job_id);
      v1::Job job;
      grpc::Status status = connection.stub->GetJob(&context, request, &job);
      if (status.ok()) {
        for (const auto& d : job.documents()) names.push_back(d.name());
        names_known = true;
        answers = std::make_unique<AnswerPrinter>(names);
      } else if (!Retryable(status) ||
                 std::chrono::duration<double>(Clock::now() - last_contact).count() >
                     options.reattach_seconds) {
        return ReportRpcError("watch", status, &context);
      }
    }
    grpc::Status status;
    if (names_known || options.jsonl) {
      grpc::ClientContext context;
      connection.Prepare(&context);
      v1::WatchJobRequest request;
      request.set_job_id(job_id);
      request.set_from_offset(next);
      auto reader = connection.stub->WatchJob(&context, request);
      if (attaches++ > 0 && show) {
        std::fprintf(stderr, "longread: re-attached to job %s from event %lld\n", job_id.c_str(),
                     static_cast<long long>(next));
      }
      v1::JobEvent event;
      while (reader->Read(&event)) {
        last_contact = Clock::now();
        backoff = 0.2;
        next = event.offset() + 1;
        if (options.jsonl) {
          std::printf("%s\n", ToJson(event).c_str());
          std::fflush(stdout);
        }
        switch (event.kind_case()) {
          case v1::JobEvent::kAssigned: {
            // A new bar per attempt: its rate counts from the assignment.
            if (show) bars.erase(event.assigned().document_index());
            break;
          }
          case v1::JobEvent::kProgress: {
            const auto& p = event.progress();
            if (!show) break;
            auto& bar = bars[p.document_index()];
            if (bar == nullptr) {
              std::string label = p.document_index() < static_cast<int>(names.size())
                                      ? names[p.document_index()]
                                      : absl::StrCat("document ", p.document_index());
              if (label.size() > 24) label = "..." + label.substr(label.size() - 21);
              bar = std::make_unique<ProgressBar>(label, "tok", true);
            }
            bar->Update(p.tokens_read(), p.total_tokens(), p.tokens_per_second());
            break;
          }
          case v1::JobEvent::kAnswer:
            if (answers != nullptr) {
              if (auto it = bars.find(event.answer().document_index()); it != bars.end()) {
                it->second->Finish();
              }
              answers->Delta(event.answer().document_index(), event.answer().text());
            }
            break;
          case v1::JobEvent::kDocumentDone: {
            const auto& d = event.document_done();
            if (auto it = bars.find(d.document_index()); it != bars.end()) it->second->Finish();
            if (answers != nullptr) answers->Done(d.document_index());
            if (show && d.state() != v1::DOCUMENT_STATE_SUCCEEDED) {
              std::fprintf(stderr, "longread: document %d %s%s%s\n", d.document_index(),
                           DocumentStateName(d.state()).c_str(), d.error().empty() ? "" : ": ",
                           d.error().c_str());
            }
            break;
          }
          case v1::JobEvent::kError:
            if (show) {
              std::fprintf(stderr, "longread: error (document %d, code %d): %s\n",
                           event.error().document_index(), event.error().code(),
                           event.error().message().c_str());
            }
            break;
          case v1::JobEvent::kJobDone:
            ended = true;
            final_state = event.job_done().state();
            break;
          default:
            break;
        }
      }
      status = reader->Finish();
      if (ended) break;
      if (!Retryable(status)) {
        if (answers != nullptr) answers->Finish();
        return ReportRpcError("watch", status, &context);
      }
    }
    if (std::chrono::duration<double>(Clock::now() - last_contact).count() >
        options.reattach_seconds) {
      if (answers != nullptr) answers->Finish();
      std::fprintf(stderr,
                   "longread: watch gave up after %.0f s without a stream (last event %lld): %s\n",
                   options.reattach_seconds, static_cast<long long>(next - 1),
                   status.error_message().c_str());
      return kUnavailable;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
    backoff = std::min(backoff * 2, 2.0);
  }
  if (answers != nullptr) answers->Finish();
  for (auto& [i, bar] : bars) bar->Finish();
  if (show) {
    std::fprintf(stderr, "longread: job %s %s\n", job_id.c_str(),
                 JobStateName(final_state).c_str());
  }
  return final_state == v1::JOB_STATE_SUCCEEDED ? kOk : kJobFailed;
}

}  // namespace longread::services::client
