// The coordinator's core: jobs in memory over the durable log (JobStore), the bounded queue of
// documents waiting for a worker, the dispatcher, one RunDocument stream per running document
// (with failover from the last checkpoint), events with dense offsets and their watchers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "longread/v1/job_service.pb.h"
#include "longread/v1/worker_service.grpc.pb.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "services/common/metrics.h"
#include "services/coordinator/job_store.h"
#include "services/coordinator/worker_pool.h"

namespace longread::coordinator {

struct CoordinatorOptions {
  int64_t max_document_bytes = int64_t{1} << 30;
  int64_t max_job_bytes = int64_t{4} << 30;
  int64_t max_queued_documents = 10000;
  double checkpoint_seconds = 30;
  int max_attempts = 5;  // workers a document may be lost on before it fails
  std::string model_fingerprint;
  absl::Duration cancel_grace = absl::Seconds(10);  // then the stream itself is cancelled
  int64_t retry_after_ms = 2000;                    // the hint sent with RESOURCE_EXHAUSTED
};

// Everything the coordinator exports (names: docs/SERVICE.md).
struct CoordinatorMetrics {
  explicit CoordinatorMetrics(services::Metrics* base);
  services::Metrics* base;
  prometheus::Gauge* jobs[6] = {};       // by v1::JobState (1..5)
  prometheus::Gauge* documents[6] = {};  // by v1::DocumentState (1..5)
  prometheus::Counter* jobs_submitted;
  prometheus::Gauge* queue_depth;
  prometheus::Gauge* workers_healthy;
  prometheus::Gauge* workers_unhealthy;
  prometheus::Counter* failovers_worker_lost;
  prometheus::Counter* failovers_drained;
  prometheus::Gauge* watchers;
  prometheus::Counter* checkpoint_bytes;
  prometheus::Histogram* job_duration;
  prometheus::Histogram* time_to_first_event;
};

// Something that streams a job's events; woken whenever the job gets one.
class JobWatcher {
 public:
  virtual ~JobWatcher() = default;
  virtual void Wake() = 0;
};

// The coordinator's side of one RunDocument stream (document_run.cc).
struct DocumentRun {
  std::mutex mu;
  std::condition_variable cv;
  bool cancel = false;        // CancelJob: the writer sends CancelDocument
  bool ended = false;         // the worker's side of the stream ended
  int64_t placed_tokens = 0;  // what WorkerPool::Acquire was told (Release gives it back)
  grpc::ClientContext context;
};

struct DocRuntime {
  v1::DocumentStatus status;
  std::string attempt_answer;  // answer text of the current attempt (resent after a failover)
  int64_t max_tokens_read = 0;
  std::string last_worker;
  std::shared_ptr<DocumentRun> run;
};

struct JobRuntime {
  std::mutex mu;
  v1::Job header;  // documents cleared
  std::vector<DocRuntime> docs;
  std::atomic<int64_t> events{0};
  std::atomic<bool> finished{false};
  absl::Time submitted = absl::Now();
  bool first_event_observed = false;

  std::recursive_mutex watch_mu;  // recursive: a watcher may end (and leave) while woken
  std::set<JobWatcher*> watchers;
};

class Coordinator {
 public:
  Coordinator(CoordinatorOptions options, JobStore* store, WorkerPool* pool,
              CoordinatorMetrics* metrics);
  ~Coordinator();

  // Loads every job; unfinished documents go back to the queue (running ones resume from their
  // checkpoints).
  absl::Status Recover();
  void Start();
  // Stops dispatching and cancels the streams to workers; running documents stay RUNNING in the
  // log, so the next start resumes them.
  void Stop();
  // Wakes the dispatcher (a worker freed a slot).
  void Poke();

  const CoordinatorOptions& options() const { return options_; }
  JobStore* store() { return store_; }
  CoordinatorMetrics* metrics() { return metrics_; }

  std::string NewJobId();
  // RESOURCE_EXHAUSTED when `documents` more would overflow the queue.
  absl::Status CheckQueueRoom(int64_t documents) const;
  // Persists (synced) the job, its documents and the JobAccepted event, then queues them.
  absl::StatusOr<v1::Job> AcceptJob(v1::Job header, std::vector<v1::DocumentStatus> documents,
                                    const std::string& idempotency_key);

  std::shared_ptr<JobRuntime> FindJob(const std::string& job_id);
  v1::Job Snapshot(JobRuntime& job, bool with_answers);
  // Jobs after `after` in id order.
  std::vector<v1::Job> List(const std::string& after, int limit, v1::JobState state,
                            std::string* next);
  absl::StatusOr<v1::Job> Cancel(const std::string& job_id);
  // The job's deadline passed: it ends FAILED (deadline_exceeded), its documents are stopped as
  // by Cancel. A no-op for a finished or cancelled job.
  void ExpireDeadline(const std::string& job_id);

  void AddWatcher(JobRuntime& job, JobWatcher* watcher);
  void RemoveWatcher(JobRuntime& job, JobWatcher* watcher);

 private:
  void DispatchLoop();
  // Ends each job whose deadline passed (ExpireDeadline), sleeping until the next deadline.
  void DeadlineLoop();
  void WatchDeadline(const std::string& job_id, absl::Time deadline);
  // With job.mu held: marks the job past its deadline and fails its unfinished documents;
  // returns the runs whose streams to workers must be cancelled.
  std::vector<std::shared_ptr<DocumentRun>> ExpireLocked(JobRuntime& job);
  void CancelRuns(const std::vector<std::shared_ptr<DocumentRun>>& runs);
  void RunDocument(std::shared_ptr<JobRuntime> job, int index, std::shared_ptr<Worker> worker,
                   std::shared_ptr<DocumentRun> run);
  // With job.mu held: appends the event (and the listed documents' and the header's state) to
  // the log, then wakes the watchers.
  void EmitLocked(JobRuntime& job, v1::JobEvent event, std::vector<int> docs, bool sync = false);
  void PersistLocked(JobRuntime& job, std::vector<int> docs);
  void SetDocStateLocked(JobRuntime& job, int index, v1::DocumentState state);
  void SetJobStateLocked(JobRuntime& job, v1::JobState state);
  void FinishDocLocked(JobRuntime& job, int index, v1::DocumentState state,
                       const std::string& error, int code);
  void MaybeFinishJobLocked(JobRuntime& job);
  void Enqueue(const std::string& job_id, int index, bool front);
  void UpdateGauges();

  const CoordinatorOptions options_;
  JobStore* store_;
  WorkerPool* pool_;
  CoordinatorMetrics* metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // dispatcher and gauge thread: always notify_all
  std::map<std::string, std::shared_ptr<JobRuntime>> jobs_;
  std::deque<std::pair<std::string, int>> queue_;
  bool stop_ = false;
  std::thread dispatcher_;
  std::thread gauges_;
  std::thread deadline_thread_;
  std::multimap<absl::Time, std::string> deadlines_;  // unfinished jobs with a deadline
  int active_runs_ = 0;
  std::condition_variable runs_cv_;
  std::set<std::shared_ptr<DocumentRun>> runs_;
  std::atomic<int64_t> queued_documents_{0};
  std::atomic<uint64_t> id_counter_{0};
};

bool IsTerminal(v1::DocumentState state);
bool IsTerminal(v1::JobState state);

}  // namespace longread::coordinator
