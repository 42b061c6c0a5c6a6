// Tests of longread-coordinator start the real coordinator and worker binaries on loopback ports
// of their choosing (port files), talk to the coordinator through the generated JobService stub,
// and compare answers with the engine run in-process (the worker tests' reference). Settings are
// tiny (service-shared): memory 64 + window 64, segments of 128, blocks of 16, recall 2, 24
// answer tokens, one thread per process.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "longread/v1/job_service.grpc.pb.h"
#include "tests/services/child_process.h"
#include "tests/services/worker/worker_harness.h"

namespace longread::coordinator::testing {

using worker::testing::TempDir;
using worker::testing::WorkerProcess;

using Process = services::testing::ChildProcess;
using services::testing::ScrapeMetrics;

inline std::unique_ptr<Process> StartCoordinator(const std::string& dir, const std::string& workers,
                                                 std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {LONGREAD_COORDINATOR_BINARY,
                                   "--model",
                                   services::testing::ModelPath(),
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--metrics-listen",
                                   "127.0.0.1:0",
                                   "--db",
                                   dir + "/db",
                                   "--workers",
                                   workers,
                                   "--port-file",
                                   dir + "/port",
                                   "--log-format",
                                   "json"};
  args.insert(args.end(), extra.begin(), extra.end());
  return std::make_unique<Process>(dir, args, dir + "/port");
}

inline std::unique_ptr<v1::JobService::Stub> JobStub(const std::string& target) {
  return v1::JobService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
}

// The tiny options every test reads with.
inline v1::JobHeader TinyHeader(const std::string& question) {
  v1::JobHeader h;
  h.mutable_task()->set_kind(v1::TASK_KIND_QUESTION);
  h.mutable_task()->set_question(question);
  worker::testing::SetTinyOptions(h.mutable_options());
  return h;
}

struct InlineDocument {
  std::string name;
  std::string text;
};

// SubmitJob with inline documents sent in chunks of `chunk_bytes`. `token` adds a bearer token.
inline grpc::Status Submit(v1::JobService::Stub* stub, const v1::JobHeader& header,
                           const std::vector<InlineDocument>& documents,
                           v1::SubmitJobResponse* response, const std::string& token = "",
                           size_t chunk_bytes = 700,
                           std::multimap<std::string, std::string>* trailers = nullptr) {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  auto writer = stub->SubmitJob(&context, response);
  v1::SubmitJobRequest r;
  *r.mutable_header() = header;
  bool ok = writer->Write(r);
  for (const InlineDocument& d : documents) {
    v1::SubmitJobRequest start;
    start.mutable_document()->set_name(d.name);
    ok = ok && writer->Write(start);
    for (size_t at = 0; ok && at < d.text.size(); at += chunk_bytes) {
      v1::SubmitJobRequest chunk;
      chunk.set_chunk(d.text.substr(at, chunk_bytes));
      ok = writer->Write(chunk);
    }
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (trailers != nullptr) {
    for (const auto& [k, v] : context.GetServerTrailingMetadata()) {
      trailers->emplace(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
    }
  }
  return status;
}

// Sends raw SubmitJob messages as given (malformed streams).
inline grpc::Status SubmitRaw(v1::JobService::Stub* stub,
                              const std::vector<v1::SubmitJobRequest>& messages,
                              const std::string& token = "") {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  v1::SubmitJobResponse response;
  auto writer = stub->SubmitJob(&context, &response);
  for (const auto& m : messages) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

// Reads WatchJob from `from` until the stream ends or `stop` says so (then the call is
// cancelled). Returns the events read.
template <typename Stop>
std::vector<v1::JobEvent> Watch(v1::JobService::Stub* stub, const std::string& job_id, int64_t from,
                                Stop stop, grpc::Status* status = nullptr,
                                const std::string& token = "") {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  request.set_from_offset(from);
  auto reader = stub->WatchJob(&context, request);
  std::vector<v1::JobEvent> events;
  v1::JobEvent e;
  while (reader->Read(&e)) {
    events.push_back(e);
    if (stop(e)) {
      context.TryCancel();
      while (reader->Read(&e)) {
      }
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (status != nullptr) *status = s;
  return events;
}

inline std::vector<v1::JobEvent> WatchToEnd(v1::JobService::Stub* stub, const std::string& job_id,
                                            int64_t from = 0) {
  return Watch(stub, job_id, from, [](const v1::JobEvent&) { return false; });
}

inline v1::Job GetJob(v1::JobService::Stub* stub, const std::string& job_id,
                      grpc::Status* status = nullptr) {
  grpc::ClientContext context;
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  grpc::Status s = stub->GetJob(&context, request, &job);
  if (status != nullptr) *status = s;
  return job;
}

// Offsets 0, 1, 2, ... in order, each once.
inline void ExpectDense(const std::vector<v1::JobEvent>& events, int64_t from = 0) {
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].offset(), from + static_cast<int64_t>(i)) << "event " << i;
  }
}

// The assignment the worker would get for `header`'s options (for the in-process reference).
inline v1::DocumentAssignment ReferenceAssignment(const worker::testing::Reference& ref,
                                                  const v1::JobHeader& header) {
  v1::DocumentAssignment a = worker::testing::TinyAssignment(ref, header.task().question(), 1, 0);
  *a.mutable_task() = header.task();
  return a;
}

// A short document (~200 tokens) that differs per index.
inline std::string NumberedDocument(int i) {
  const std::string small = services::testing::SmallDocument();
  return absl::StrCat("Record ", i, " of the harbor series. The keeper on duty was number ",
                      100 + i * 7, ".\n\n", small.substr(0, 700 + (i % 5) * 40));
}

inline std::string JobStateName(v1::JobState s) { return v1::JobState_Name(s); }

// The value of field `key` in the first JSON log line of `event` (-1 if absent).
inline double LoggedNumber(const std::string& log, const std::string& event,
                           const std::string& key) {
  const size_t at = log.find(absl::StrCat("\"event\":\"", event, "\""));
  if (at == std::string::npos) return -1;
  const size_t k = log.find(absl::StrCat("\"", key, "\":\""), at);
  if (k == std::string::npos) return -1;
  return std::atof(log.c_str() + k + key.size() + 4);
}
inline long long LoggedInt(const std::string& log, const std::string& event,
                           const std::string& key) {
  return static_cast<long long>(LoggedNumber(log, event, key));
}

}  // namespace longread::coordinator::testing
