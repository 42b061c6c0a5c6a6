// longread.v1.WorkerService: one model, many documents at once. Each RunDocument call runs its
// document on the handler's thread as a DocumentSession, one step (a segment, or one answer
// token) at a time under a FIFO lock over the shared model and thread pool, so documents take
// turns; between steps it checks for cancellation and draining, and takes the checkpoints the
// coordinator stores (checkpoint_codec.h). A library, so that the binary, embedded mode and
// tests host the same code.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cache/archive_database.h"
#include "engine/memory/reading_backend.h"
#include "engine/memory/segment_batcher.h"
#include "engine/model/llama_model.h"
#include "engine/scorer/scorer.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"
#include "longread/v1/worker_service.grpc.pb.h"
#include "services/worker/fair_lock.h"
#include "services/worker/worker_metrics.h"

namespace longread::worker {

struct WorkerOptions {
  int32_t capacity = 4;   // documents at once
  std::string cache_dir;  // the local archive database lives in <cache_dir>/worker-db
  uint64_t archive_max_bytes = uint64_t{1} << 30;  // per document attempt
  std::string device = "cpu";
  // > 1: documents' segments share forward passes, up to this many per pass
  // (engine::SegmentBatcher); a device backend is where that pays (one GEMM per weight over
  // every document's rows). 1: each document reads alone, taking turns.
  int32_t batch_documents = 1;
  // Document tokens buffered ahead of the reader (beyond it the stream is not read, and gRPC's
  // flow control holds the coordinator back).
  int64_t max_buffered_tokens = int64_t{1} << 20;
  // A document still answering when less than this is left of the drain is handed back.
  absl::Duration answer_handback_margin = absl::Seconds(5);
  // Embedded mode (`longread run`): the archive database is the host's, opened, collected and
  // closed by it with `longread run`'s semantics (services/cli/run_archive.h); cache_dir is then
  // unused and the worker neither clears nor compacts it. Archives are named by archive_id()
  // (the host's run id, so that a killed run's archive is collected by the next run).
  cache::ArchiveDatabase* archive_db = nullptr;
  std::function<std::string()> archive_id;
};

// What the worker serves with; not owned, outlives the service.
struct WorkerModel {
  engine::LlamaModel* model = nullptr;
  const engine::Tokenizer* tokenizer = nullptr;
  kernels::ThreadPool* pool = nullptr;
  std::shared_ptr<const engine::ScorerWeights> scorer;
  // Where documents are read (the weights loaded once, each document its own memory there);
  // null: the CPU backend over `model`. Must be over `model`.
  engine::ReadingBackend* backend = nullptr;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  // Opens the archive database (a damaged one is moved aside) and deletes every archive found
  // there: the database belongs to this process (RocksDB's lock), so they are a dead one's.
  static absl::StatusOr<std::unique_ptr<WorkerServiceImpl>> Create(WorkerModel model,
                                                                   WorkerOptions options,
                                                                   WorkerMetrics* metrics);
  ~WorkerServiceImpl() override;

  grpc::Status RunDocument(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::RunDocumentOutput, v1::RunDocumentInput>* stream) override;
  grpc::Status GetLoad(grpc::ServerContext* context, const v1::GetLoadRequest* request,
                       v1::WorkerLoad* load) override;

  // SIGTERM: new documents are refused (UNAVAILABLE); running ones stop after their current
  // step, checkpoint and hand back (one still answering finishes its answer if it can before
  // `deadline` minus the margin).
  void StartDrain(absl::Time deadline);
  // Waits until no document is in flight or `deadline` passes; true when none is left.
  bool WaitIdle(absl::Time deadline);
  int32_t in_flight() const;
  bool draining() const;
  absl::Time drain_deadline() const;
  // The local archive database opened (recall needs it).
  bool archive_ready() const { return archive_db_ != nullptr; }
  const std::string& model_fingerprint() const { return model_.model->fingerprint(); }

 private:
  friend class DocumentRun;
  WorkerServiceImpl(WorkerModel model, WorkerOptions options, WorkerMetrics* metrics);
  grpc::Status Admit(const v1::DocumentAssignment& assignment);
  void Release();
  void RecordTokensRead(int64_t tokens);
  void UpdateArchiveBytes(int64_t delta);
  void UpdateMemoryBytes(int64_t delta);  // the documents' memories (device_memory_bytes)
  void UpdateDatabaseSize();
  // A device backend's checkpoint and restore move the memory over the backend's one stream:
  // they take the model lock there. The CPU's only touch the session.
  bool DeviceStateNeedsLock() const { return model_.backend->device() != "cpu"; }

  WorkerModel model_;
  std::unique_ptr<engine::ReadingBackend> own_backend_;  // when model_.backend was null
  WorkerOptions options_;
  WorkerMetrics* metrics_;
  int64_t model_bytes_ = 0;
  FairLock model_lock_;
  // Reads documents' segments in shared passes under model_lock_ (batch_documents > 1).
  std::unique_ptr<engine::SegmentBatcher> batcher_;
  // <cache_dir>/worker-db, unless the host gives one.
  std::unique_ptr<cache::ArchiveDatabase> own_db_;
  cache::ArchiveDatabase* archive_db_ = nullptr;  // null when the cache directory is unusable

  mutable absl::Mutex mu_;
  int32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::deque<std::pair<absl::Time, int64_t>> recent_reads_ ABSL_GUARDED_BY(mu_);
  int64_t archive_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t memory_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace longread::worker
