// Tests of longread-worker act as its coordinator: they start the real binary on a loopback port
// of its choosing (--listen 127.0.0.1:0 --listen-port-file), talk to it through the generated
// stub, and compare with the engine run in-process. Settings are tiny (service-shared: memory
// 64 + window 64, segments of 128, blocks of 16, recall 2, 24 answer tokens, one thread).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/block_archive_store.h"
#include "cache/cache_db.h"
#include "engine/job/document_job.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/thread_pool.h"
#include "longread/v1/worker_service.grpc.pb.h"
#include "services/worker/job_options.h"
#include "tests/services/child_process.h"
#include "tests/services/cli_runner.h"

namespace longread::worker::testing {

using services::testing::ModelPath;
using services::testing::ReadFile;

// A temporary directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "longread-worker-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A longread-worker child process, killed (SIGKILL) at the end if it still runs.
class WorkerProcess : public services::testing::ChildProcess {
 public:
  // Starts the worker and waits until it serves (or dies). `extra` are more flags.
  explicit WorkerProcess(const std::string& dir, std::vector<std::string> extra = {})
      : ChildProcess(dir, Args(dir, std::move(extra)), dir + "/port") {}

  std::unique_ptr<v1::WorkerService::Stub> Stub(
      std::shared_ptr<grpc::ChannelCredentials> credentials =
          grpc::InsecureChannelCredentials()) const {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(16 << 20);
    return v1::WorkerService::NewStub(grpc::CreateCustomChannel(target(), credentials, args));
  }

  // GET /metrics from the worker's exposer (its port is in the "serving" log line); "" on error.
  std::string ScrapeMetrics() const {
    const std::string text = log();
    const std::string key = "\"metrics_port\":\"";
    const size_t at = text.find(key);
    if (at == std::string::npos) return "";
    return services::testing::ScrapeMetrics(std::atoi(text.c_str() + at + key.size()));
  }

 private:
  static std::vector<std::string> Args(const std::string& dir, std::vector<std::string> extra) {
    std::vector<std::string> args = {LONGREAD_WORKER_BINARY,
                                     "--model",
                                     ModelPath(),
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--listen-port-file",
                                     dir + "/port",
                                     "--metrics-listen",
                                     "127.0.0.1:0",
                                     "--threads",
                                     "1",
                                     "--cache-dir",
                                     dir + "/cache",
                                     "--log-format",
                                     "json"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
};

// The model, tokenizer and pool of the in-process reference, loaded once per test binary.
struct Reference {
  std::unique_ptr<engine::LlamaModel> model;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::unique_ptr<kernels::ThreadPool> pool;
};

inline Reference* SharedReference() {
  static Reference* reference = [] {
    auto file = engine::ModelFile::Open(ModelPath());
    if (!file.ok()) return static_cast<Reference*>(nullptr);
    auto tokenizer = engine::Tokenizer::Create((*file)->tokenizer());
    auto model = engine::LlamaModel::Load(std::move(*file));
    if (!tokenizer.ok() || !model.ok()) return static_cast<Reference*>(nullptr);
    auto* r = new Reference;
    r->model = std::move(*model);
    r->tokenizer = std::move(*tokenizer);
    r->pool = std::make_unique<kernels::ThreadPool>(1);
    return r;
  }();
  return reference;
}

#define REQUIRE_REFERENCE(ref)                                                                  \
  ::longread::worker::testing::Reference* ref = ::longread::worker::testing::SharedReference(); \
  if (ref == nullptr) GTEST_SKIP() << "default model missing: run scripts/setup.sh"

// The tiny reading settings of every worker and coordinator test.
inline void SetTinyOptions(v1::JobOptions* o) {
  o->set_memory_k(64);
  o->set_window(64);
  o->set_sinks(4);
  o->set_segment_tokens(128);
  o->set_block_tokens(16);
  o->set_recall_blocks(2);
  o->set_max_new_tokens(24);
}

// The tiny settings every worker test reads with.
inline v1::DocumentAssignment TinyAssignment(const Reference& ref, const std::string& question,
                                             int64_t total_tokens, double checkpoint_seconds) {
  v1::DocumentAssignment a;
  a.set_job_id("job-test");
  a.set_document_index(0);
  a.set_attempt(1);
  a.mutable_task()->set_kind(v1::TASK_KIND_QUESTION);
  a.mutable_task()->set_question(question);
  SetTinyOptions(a.mutable_options());
  a.set_total_tokens(total_tokens);
  a.set_checkpoint_seconds(checkpoint_seconds);
  a.set_model_fingerprint(ref.model->fingerprint());
  return a;
}

inline std::vector<int32_t> Tokenize(const Reference& ref, const std::string& document) {
  return ref.tokenizer->Encode(document, /*parse_special=*/false);
}

// engine::RunDocumentJob in-process with the assignment's options and a RocksDB bf16 archive
// (what the worker and `longread run` use).
inline std::string ReferenceAnswer(const Reference& ref, const std::string& document,
                                   const v1::DocumentAssignment& assignment) {
  TempDir dir;
  auto options = ToDocumentJobOptions(assignment);
  EXPECT_TRUE(options.ok()) << options.status();
  auto db = cache::CacheDb::Open(dir.path() + "/db");
  EXPECT_TRUE(db.ok()) << db.status();
  const auto& c = ref.model->config();
  auto archive = cache::RocksDbBlockArchive::Open(db->get(), "reference", c.n_layers, c.n_kv_heads,
                                                  c.head_dim);
  EXPECT_TRUE(archive.ok()) << archive.status();
  options->archive = archive->get();
  auto result = engine::RunDocumentJob(*ref.model, *ref.tokenizer, document, *options, nullptr,
                                       ref.pool.get());
  EXPECT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->recall_error.empty()) << result->recall_error;
  return result.ok() ? result->answer : "";
}

// One RunDocument call, the test playing the coordinator.
class DocumentCall {
 public:
  explicit DocumentCall(v1::WorkerService::Stub* stub) : stream_(stub->RunDocument(&context_)) {}

  bool Send(const v1::RunDocumentInput& in) { return stream_->Write(in); }
  bool SendAssignment(const v1::DocumentAssignment& assignment) {
    v1::RunDocumentInput in;
    *in.mutable_assignment() = assignment;
    return Send(in);
  }
  bool SendResume(const std::vector<v1::CheckpointPart>& parts) {
    for (const v1::CheckpointPart& part : parts) {
      v1::RunDocumentInput in;
      *in.mutable_resume() = part;
      if (!Send(in)) return false;
    }
    return true;
  }
  // Tokens [from, to) of `tokens` in chunks of 100; `last` when `to` is the end.
  bool SendTokens(const std::vector<int32_t>& tokens, size_t from, size_t to) {
    for (size_t at = from; at < to; at += 100) {
      const size_t end = std::min(to, at + 100);
      v1::RunDocumentInput in;
      in.mutable_tokens()->set_offset(static_cast<int64_t>(at));
      in.mutable_tokens()->mutable_tokens()->Add(tokens.begin() + at, tokens.begin() + end);
      in.mutable_tokens()->set_last(end == tokens.size());
      if (!Send(in)) return false;
    }
    return true;
  }
  bool SendCancel() {
    v1::RunDocumentInput in;
    in.mutable_cancel()->set_reason("test cancels");
    return Send(in);
  }
  void WritesDone() { stream_->WritesDone(); }
  void TryCancel() { context_.TryCancel(); }

  // Reads one message, keeping what it says.
  bool Read(v1::RunDocumentOutput* out) {
    if (!stream_->Read(out)) return false;
    if (out->has_answer()) {
      if (answer_text.empty()) first_answer_text = out->answer().text();
      answer_text += out->answer().text();
    }
    if (out->has_progress()) {
      ++progress_messages;
      max_tokens_read = std::max(max_tokens_read, out->progress().tokens_read());
    }
    if (out->has_checkpoint()) checkpoint_parts.push_back(out->checkpoint());
    if (out->has_finished()) finished = out->finished();
    if (out->has_handed_back()) handed_back = out->handed_back();
    return true;
  }
  // Reads until `pred` holds for a message (true) or the stream ends (false).
  template <typename Pred>
  bool ReadUntil(Pred pred) {
    v1::RunDocumentOutput out;
    while (Read(&out)) {
      if (pred(out)) return true;
    }
    return false;
  }
  // Reads everything left and the status.
  grpc::Status Finish() {
    v1::RunDocumentOutput out;
    while (Read(&out)) {
    }
    return stream_->Finish();
  }

  std::string answer_text;
  std::string first_answer_text;  // the first AnswerText message
  int progress_messages = 0;
  int64_t max_tokens_read = 0;
  std::vector<v1::CheckpointPart> checkpoint_parts;
  std::optional<v1::DocumentFinished> finished;
  std::optional<v1::HandedBack> handed_back;

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::RunDocumentInput, v1::RunDocumentOutput>> stream_;
};

// What a coordinator sends to resume from checkpoint `sequence`: every earlier checkpoint's
// archive blocks (snapshots dropped), then that checkpoint's parts as they came.
inline std::vector<v1::CheckpointPart> ResumeParts(const std::vector<v1::CheckpointPart>& parts,
                                                   int64_t sequence) {
  std::vector<v1::CheckpointPart> out;
  for (const v1::CheckpointPart& part : parts) {
    if (part.sequence() < sequence) {
      if (part.archive_blocks_size() == 0) continue;
      v1::CheckpointPart blocks = part;
      blocks.clear_snapshot();
      blocks.set_last(false);
      out.push_back(std::move(blocks));
    } else if (part.sequence() == sequence) {
      out.push_back(part);
    }
  }
  return out;
}

// A longer document (about 1,650 tokens): three different takes on the small one.
inline std::string LongDocument() {
  const std::string small = services::testing::SmallDocument();
  return small + "\n\nSecond copy of the harbor records, as the archivist found them.\n\n" + small +
         "\n\nThird copy, with the archivist's notes removed.\n\n" + small;
}

}  // namespace longread::worker::testing
