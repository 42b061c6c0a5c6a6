// Embedded mode: `longread run` reads its document through the service's own code, a worker
// (services/worker) and a coordinator (services/coordinator) hosted in this process as gRPC
// servers without listening ports, reached through in-process channels. Nothing goes over a
// network and nothing reaches the disk that `longread run` did not write before: the job log is
// RocksDB on an in-memory file system, checkpoints are off (one process: nothing to fail over
// to), and the recall archive is the run's own (services/cli/run_archive.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "cache/cache_db.h"
#include "engine/job/document_job.h"
#include "engine/memory/reading_backend.h"
#include "engine/model/llama_model.h"
#include "engine/scorer/scorer.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"
#include "longread/v1/common.pb.h"

namespace longread::services {

// The model is loaded once, by the caller: the worker runs it and the coordinator tokenizes with
// its tokenizer. Not owned.
struct EmbeddedRunOptions {
  engine::LlamaModel* model = nullptr;
  const engine::Tokenizer* tokenizer = nullptr;
  kernels::ThreadPool* pool = nullptr;
  std::shared_ptr<const engine::ScorerWeights> scorer;
  // Where the worker reads (over `model`); null: the CPU backend.
  engine::ReadingBackend* backend = nullptr;
  std::string document_name;
  int64_t max_document_bytes = int64_t{1} << 30;
  uint64_t archive_max_bytes = uint64_t{1} << 30;
  // The run's archive database (RunArchive::db()) and the id the archive is written under; null:
  // no recall archive (recall off, or the cache unusable).
  cache::CacheDb* archive_db = nullptr;
  std::string archive_id;
};

struct EmbeddedRunCallbacks {
  std::function<void(int64_t tokens_read, int64_t total_tokens)> progress;  // each segment
  std::function<void(std::string_view text)> answer_text;                   // as it streams
};

struct EmbeddedRunResult {
  std::string job_id;
  std::string answer;
  v1::DocumentStats stats;
};

// `longread run`'s parsed options as the service's task and job options (every option travels:
// the worker maps them back with worker::ToDocumentJobOptions).
void ToServiceJob(const engine::DocumentJobOptions& options, v1::Task* task,
                  v1::JobOptions* job_options);

// Submits `document` (streamed in chunks, then freed: the worker reads the coordinator's tokens)
// to the in-process coordinator and follows the job to its end. An error carries the service's
// status code: INVALID_ARGUMENT (unusable input), OUT_OF_RANGE (too long for the chosen attention),
// others internal.
absl::StatusOr<EmbeddedRunResult> RunEmbedded(const EmbeddedRunOptions& options,
                                              const v1::Task& task,
                                              const v1::JobOptions& job_options,
                                              std::string document,
                                              const EmbeddedRunCallbacks& callbacks);

}  // namespace longread::services
