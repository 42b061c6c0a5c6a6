#include "services/coordinator/coordinator.h"

#include <algorithm>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/time_util.h"
#include "services/common/log.h"

namespace longread::coordinator {

using services::Log;
using services::LogLevel;

namespace {

google::protobuf::Timestamp Now() { return google::protobuf::util::TimeUtil::GetCurrentTime(); }

const char* kStateLabels[] = {"", "queued", "running", "succeeded", "failed", "cancelled"};

absl::Time ToTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

}  // namespace

bool IsTerminal(v1::DocumentState s) {
  return s == v1::DOCUMENT_STATE_SUCCEEDED || s == v1::DOCUMENT_STATE_FAILED ||
         s == v1::DOCUMENT_STATE_CANCELLED;
}
bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

CoordinatorMetrics::CoordinatorMetrics(services::Metrics* m) : base(m) {
  auto& reg = m->registry();
  auto& jobs_family =
      prometheus::BuildGauge().Name("longread_jobs").Help("Jobs by state").Register(reg);
  auto& docs_family =
      prometheus::BuildGauge().Name("longread_documents").Help("Documents by state").Register(reg);
  for (int s = 1; s <= 5; ++s) {
    jobs[s] = &jobs_family.Add({{"state", kStateLabels[s]}});
    documents[s] = &docs_family.Add({{"state", kStateLabels[s]}});
  }
  jobs_submitted = &prometheus::BuildCounter()
                        .Name("longread_jobs_submitted_total")
                        .Help("Jobs accepted")
                        .Register(reg)
                        .Add({});
  queue_depth = &prometheus::BuildGauge()
                     .Name("longread_queue_depth")
                     .Help("Documents waiting for a worker")
                     .Register(reg)
                     .Add({});
  auto& workers =
      prometheus::BuildGauge().Name("longread_workers").Help("Workers by state").Register(reg);
  workers_healthy = &workers.Add({{"state", "healthy"}});
  workers_unhealthy = &workers.Add({{"state", "unhealthy"}});
  auto& failovers = prometheus::BuildCounter()
                        .Name("longread_failovers_total")
                        .Help("Documents moved to another worker")
                        .Register(reg);
  failovers_worker_lost = &failovers.Add({{"reason", "worker_lost"}});
  failovers_drained = &failovers.Add({{"reason", "drained"}});
  watchers = &prometheus::BuildGauge()
                  .Name("longread_watchers")
                  .Help("Open WatchJob streams")
                  .Register(reg)
                  .Add({});
  checkpoint_bytes = &prometheus::BuildCounter()
                          .Name("longread_checkpoint_bytes_total")
                          .Help("Checkpoint bytes received from workers")
                          .Register(reg)
                          .Add({});
  job_duration = &prometheus::BuildHistogram()
                      .Name("longread_job_duration_seconds")
                      .Help("Submit to last answer")
                      .Register(reg)
                      .Add({}, services::Metrics::SecondsBuckets(0.5, 16384, 2));
  time_to_first_event = &prometheus::BuildHistogram()
                             .Name("longread_time_to_first_event_seconds")
                             .Help("Submit to the first event after JobAccepted")
                             .Register(reg)
                             .Add({}, services::Metrics::SecondsBuckets(0.01, 600, 2));
}

Coordinator::Coordinator(CoordinatorOptions options, JobStore* store, WorkerPool* pool,
                         CoordinatorMetrics* metrics)
    : options_(std::move(options)), store_(store), pool_(pool), metrics_(metrics) {}

Coordinator::~Coordinator() { Stop(); }

std::string Coordinator::NewJobId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  const int64_t micros = absl::ToUnixMicros(absl::Now());
  return absl::StrFormat("%013x%04x%04x", micros,
                         static_cast<unsigned>(id_counter_.fetch_add(1) & 0xffff),
                         static_cast<unsigned>(rng() & 0xffff));
}

absl::Status Coordinator::CheckQueueRoom(int64_t documents) const {
  if (queued_documents_.load() + documents > options_.max_queued_documents) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the queue is full (", queued_documents_.load(), " documents waiting, at most ",
        options_.max_queued_documents, "); retry in ", options_.retry_after_ms, " ms"));
  }
  return absl::OkStatus();
}

void Coordinator::SetDocStateLocked(JobRuntime& job, int index, v1::DocumentState state) {
  v1::DocumentStatus& s = job.docs[index].status;
  if (s.state() == state) return;
  if (s.state() >= 1 && s.state() <= 5) metrics_->documents[s.state()]->Decrement();
  if (s.state() == v1::DOCUMENT_STATE_QUEUED) --queued_documents_;
  s.set_state(state);
  metrics_->documents[state]->Increment();
  if (state == v1::DOCUMENT_STATE_QUEUED) ++queued_documents_;
  metrics_->queue_depth->Set(static_cast<double>(queued_documents_.load()));
}

void Coordinator::SetJobStateLocked(JobRuntime& job, v1::JobState state) {
  const v1::JobState old = job.header.state();
  if (old == state) return;
  if (old >= 1 && old <= 5) metrics_->jobs[old]->Decrement();
  job.header.set_state(state);
  metrics_->jobs[state]->Increment();
}

void Coordinator::PersistLocked(JobRuntime& job, std::vector<int> docs) {
  JobStore::Write w;
  *job.header.mutable_updated() = Now();
  w.header = &job.header;
  for (int d : docs) w.documents.push_back(&job.docs[d].status);
  if (absl::Status s = store_->Apply(job.header.job_id(), w, /*sync=*/true); !s.ok()) {
    Log(LogLevel::kError, "store_write_failed",
        {{"job", job.header.job_id()}, {"error", std::string(s.message())}});
  }
}

void Coordinator::EmitLocked(JobRuntime& job, v1::JobEvent event, std::vector<int> docs,
                             bool sync) {
  const int64_t offset = job.events.load();
  event.set_job_id(job.header.job_id());
  event.set_offset(offset);
  *event.mutable_time() = Now();
  job.header.set_events(offset + 1);
  *job.header.mutable_updated() = event.time();
  JobStore::Write w;
  w.header = &job.header;
  w.event = &event;
  for (int d : docs) w.documents.push_back(&job.docs[d].status);
  if (absl::Status s = store_->Apply(job.header.job_id(), w, sync); !s.ok()) {
    // The event is lost for watchers; the job's state in memory goes on. Rare (disk full).
    Log(LogLevel::kError, "store_write_failed",
        {{"job", job.header.job_id()}, {"error", std::string(s.message())}});
    job.header.set_events(offset);
    return;
  }
  if (!job.first_event_observed && !event.has_accepted()) {
    job.first_event_observed = true;
    metrics_->time_to_first_event->Observe(absl::ToDoubleSeconds(absl::Now() - job.submitted));
  }
  // The count first: a watcher that sees `finished` must also see the JobDone event counted.
  job.events = offset + 1;
  if (event.has_job_done()) job.finished = true;
  std::lock_guard<std::recursive_mutex> lock(job.watch_mu);
  const std::vector<JobWatcher*> watchers(job.watchers.begin(), job.watchers.end());
  for (JobWatcher* w : watchers) {
    if (job.watchers.count(w)) w->Wake();
  }
}

void Coordinator::AddWatcher(JobRuntime& job, JobWatcher* watcher) {
  std::lock_guard<std::recursive_mutex> lock(job.watch_mu);
  job.watchers.insert(watcher);
  metrics_->watchers->Increment();
}

void Coordinator::RemoveWatcher(JobRuntime& job, JobWatcher* watcher) {
  std::lock_guard<std::recursive_mutex> lock(job.watch_mu);
  if (job.watchers.erase(watcher)) metrics_->watchers->Decrement();
}

void Coordinator::Enqueue(const std::string& job_id, int index, bool front) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (front) {
      queue_.emplace_front(job_id, index);
    } else {
      queue_.emplace_back(job_id, index);
    }
  }
  cv_.notify_all();
}

void Coordinator::Poke() { cv_.notify_all(); }

absl::StatusOr<v1::Job> Coordinator::AcceptJob(v1::Job header,
                                               std::vector<v1::DocumentStatus> documents,
                                               const std::string& idempotency_key) {
  auto job = std::make_shared<JobRuntime>();
  const std::string id = header.job_id();
  job->header = std::move(header);
  job->header.clear_documents();
  *job->header.mutable_created() = Now();
  int64_t total_tokens = 0;
  std::vector<int> all;
  std::optional<absl::Time> deadline;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    SetJobStateLocked(*job, v1::JOB_STATE_QUEUED);
    for (size_t i = 0; i < documents.size(); ++i) {
      DocRuntime d;
      d.status = std::move(documents[i]);
      d.status.set_index(static_cast<int32_t>(i));
      total_tokens += d.status.total_tokens();
      const v1::DocumentState state = d.status.state();
      d.status.set_state(v1::DOCUMENT_STATE_UNSPECIFIED);
      job->docs.push_back(std::move(d));
      SetDocStateLocked(
          *job, static_cast<int>(i),
          state == v1::DOCUMENT_STATE_UNSPECIFIED ? v1::DOCUMENT_STATE_QUEUED : state);
      all.push_back(static_cast<int>(i));
    }
    v1::JobEvent event;
    event.mutable_accepted()->set_documents(static_cast<int32_t>(documents.size()));
    event.mutable_accepted()->set_total_tokens(total_tokens);
    // One synced write: header, documents, the first event and the idempotency key.
    const int64_t offset = 0;
    event.set_job_id(id);
    event.set_offset(offset);
    *event.mutable_time() = Now();
    job->header.set_events(1);
    JobStore::Write w;
    w.header = &job->header;
    w.event = &event;
    for (const DocRuntime& d : job->docs) w.documents.push_back(&d.status);
    if (!idempotency_key.empty()) w.idempotency = std::make_pair(idempotency_key, id);
    if (absl::Status s = store_->Apply(id, w, /*sync=*/true); !s.ok()) {
      for (size_t i = 0; i < job->docs.size(); ++i) {
        SetDocStateLocked(*job, static_cast<int>(i), v1::DOCUMENT_STATE_CANCELLED);
        metrics_->documents[v1::DOCUMENT_STATE_CANCELLED]->Decrement();
      }
      metrics_->jobs[v1::JOB_STATE_QUEUED]->Decrement();
      return absl::UnavailableError(absl::StrCat("cannot persist the job: ", s.message()));
    }
    job->events = 1;
    if (job->header.has_deadline()) deadline = ToTime(job->header.deadline());
  }
  metrics_->jobs_submitted->Increment();
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_[id] = job;
    for (int i : all) queue_.emplace_back(id, i);
  }
  cv_.notify_all();
  if (deadline.has_value()) WatchDeadline(id, *deadline);
  Log(LogLevel::kInfo, "job_accepted",
      {{"job", id},
       {"documents", std::to_string(documents.size())},
       {"tokens", std::to_string(total_tokens)}});
  return Snapshot(*job, true);
}

std::shared_ptr<JobRuntime> Coordinator::FindJob(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : it->second;
}

v1::Job Coordinator::Snapshot(JobRuntime& job, bool with_answers) {
  std::lock_guard<std::mutex> lock(job.mu);
  v1::Job out = job.header;
  for (const DocRuntime& d : job.docs) {
    v1::DocumentStatus* s = out.add_documents();
    *s = d.status;
    if (!with_answers) s->clear_answer();
  }
  return out;
}

std::vector<v1::Job> Coordinator::List(const std::string& after, int limit, v1::JobState state,
                                       std::string* next) {
  std::vector<std::shared_ptr<JobRuntime>> page;
  next->clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = jobs_.upper_bound(after); it != jobs_.end(); ++it) {
      if (state != v1::JOB_STATE_UNSPECIFIED) {
        std::lock_guard<std::mutex> job_lock(it->second->mu);
        if (it->second->header.state() != state) continue;
      }
      if (static_cast<int>(page.size()) == limit) {
        *next = page.back()->header.job_id();
        break;
      }
      page.push_back(it->second);
    }
  }
  std::vector<v1::Job> out;
  for (auto& job : page) out.push_back(Snapshot(*job, false));
  return out;
}

void Coordinator::FinishDocLocked(JobRuntime& job, int index, v1::DocumentState state,
                                  const std::string& error, int code) {
  DocRuntime& d = job.docs[index];
  if (IsTerminal(d.status.state())) return;
  SetDocStateLocked(job, index, state);
  if (!error.empty()) d.status.set_error(error);
  if (state == v1::DOCUMENT_STATE_FAILED) {
    v1::JobEvent e;
    e.mutable_error()->set_document_index(index);
    e.mutable_error()->set_code(code);
    e.mutable_error()->set_message(error);
    EmitLocked(job, std::move(e), {});
  }
  v1::JobEvent e;
  v1::DocumentDone* done = e.mutable_document_done();
  done->set_document_index(index);
  done->set_state(state);
  done->set_answer(d.status.answer());
  *done->mutable_stats() = d.status.stats();
  done->set_error(d.status.error());
  EmitLocked(job, std::move(e), {index}, /*sync=*/true);
  Log(LogLevel::kInfo, "document_done",
      {{"job", job.header.job_id()},
       {"document", std::to_string(index)},
       {"state", kStateLabels[state]},
       {"attempts", std::to_string(d.status.stats().attempts())},
       {"tokens_reread", std::to_string(d.status.stats().tokens_reread())}});
  MaybeFinishJobLocked(job);
}

void Coordinator::MaybeFinishJobLocked(JobRuntime& job) {
  if (job.finished) return;
  bool failed = false, cancelled = false;
  for (const DocRuntime& d : job.docs) {
    if (!IsTerminal(d.status.state())) return;
    failed = failed || d.status.state() == v1::DOCUMENT_STATE_FAILED;
    cancelled = cancelled || d.status.state() == v1::DOCUMENT_STATE_CANCELLED;
  }
  const v1::JobState state = cancelled ? v1::JOB_STATE_CANCELLED
                             : failed  ? v1::JOB_STATE_FAILED
                                       : v1::JOB_STATE_SUCCEEDED;
  SetJobStateLocked(job, state);
  v1::JobEvent e;
  e.mutable_job_done()->set_state(state);
  EmitLocked(job, std::move(e), {}, /*sync=*/true);
  metrics_->job_duration->Observe(absl::ToDoubleSeconds(absl::Now() - job.submitted));
  if (absl::Status s = store_->DeleteJobWorkData(job.header.job_id()); !s.ok()) {
    Log(LogLevel::kWarning, "cleanup_failed",
        {{"job", job.header.job_id()}, {"error", std::string(s.message())}});
  }
  Log(LogLevel::kInfo, "job_done",
      {{"job", job.header.job_id()},
       {"state", kStateLabels[state]},
       {"seconds", absl::StrFormat("%.3f", absl::ToDoubleSeconds(absl::Now() - job.submitted))}});
}

absl::StatusOr<v1::Job> Coordinator::Cancel(const std::string& job_id) {
  std::shared_ptr<JobRuntime> job = FindJob(job_id);
  if (job == nullptr) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  std::vector<std::shared_ptr<DocumentRun>> to_cancel;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (!job->finished && !job->header.cancel_requested()) {
      job->header.set_cancel_requested(true);
      PersistLocked(*job, {});
      Log(LogLevel::kInfo, "job_cancel_requested", {{"job", job_id}});
      for (size_t i = 0; i < job->docs.size(); ++i) {
        DocRuntime& d = job->docs[i];
        if (d.status.state() == v1::DOCUMENT_STATE_QUEUED) {
          FinishDocLocked(*job, static_cast<int>(i), v1::DOCUMENT_STATE_CANCELLED, "", 1);
        } else if (d.status.state() == v1::DOCUMENT_STATE_RUNNING && d.run != nullptr) {
          to_cancel.push_back(d.run);
        }
      }
    }
  }
  CancelRuns(to_cancel);
  return Snapshot(*job, true);
}

void Coordinator::CancelRuns(const std::vector<std::shared_ptr<DocumentRun>>& runs) {
  // Cancelling the call reaches the worker between two steps (one segment or one token).
  for (const auto& run : runs) {
    {
      std::lock_guard<std::mutex> lock(run->mu);
      run->cancel = true;
    }
    run->context.TryCancel();
  }
}

std::vector<std::shared_ptr<DocumentRun>> Coordinator::ExpireLocked(JobRuntime& job) {
  std::vector<std::shared_ptr<DocumentRun>> runs;
  if (job.finished || job.header.cancel_requested() || job.header.deadline_exceeded()) return runs;
  job.header.set_deadline_exceeded(true);
  const std::string timeout =
      absl::FormatDuration(ToTime(job.header.deadline()) - ToTime(job.header.created()));
  Log(LogLevel::kInfo, "job_deadline_exceeded",
      {{"job", job.header.job_id()}, {"timeout", timeout}});
  v1::JobEvent e;
  e.mutable_error()->set_document_index(-1);
  e.mutable_error()->set_code(grpc::StatusCode::DEADLINE_EXCEEDED);
  e.mutable_error()->set_message(absl::StrCat("the job's deadline passed (timeout ", timeout, ")"));
  EmitLocked(job, std::move(e), {}, /*sync=*/true);
  // Documents end now, each with the answer text streamed so far; the workers of running ones
  // are told to stop (their streams' ends change nothing once the document is FAILED).
  for (size_t i = 0; i < job.docs.size(); ++i) {
    DocRuntime& d = job.docs[i];
    if (IsTerminal(d.status.state())) continue;
    if (d.status.state() == v1::DOCUMENT_STATE_RUNNING && d.run != nullptr) runs.push_back(d.run);
    FinishDocLocked(job, static_cast<int>(i), v1::DOCUMENT_STATE_FAILED,
                    "the job's deadline passed", grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  return runs;
}

void Coordinator::ExpireDeadline(const std::string& job_id) {
  std::shared_ptr<JobRuntime> job = FindJob(job_id);
  if (job == nullptr) return;
  std::vector<std::shared_ptr<DocumentRun>> runs;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    runs = ExpireLocked(*job);
  }
  CancelRuns(runs);
}

void Coordinator::WatchDeadline(const std::string& job_id, absl::Time deadline) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    deadlines_.emplace(deadline, job_id);
  }
  cv_.notify_all();
}

void Coordinator::DeadlineLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (deadlines_.empty()) {
      cv_.wait(lock);
      continue;
    }
    const auto next = deadlines_.begin();
    if (next->first > absl::Now()) {
      cv_.wait_until(lock, absl::ToChronoTime(next->first));
      continue;
    }
    const std::string job_id = next->second;
    deadlines_.erase(next);
    lock.unlock();
    ExpireDeadline(job_id);
    lock.lock();
  }
}

absl::Status Coordinator::Recover() {
  auto jobs = store_->LoadJobs();
  if (!jobs.ok()) return jobs.status();
  int resumed = 0, requeued = 0;
  for (StoredJob& stored : *jobs) {
    auto job = std::make_shared<JobRuntime>();
    const std::string id = stored.header.job_id();
    job->header = std::move(stored.header);
    job->events = stored.events;
    job->header.set_events(stored.events);
    job->first_event_observed = true;
    const v1::JobState state = job->header.state();
    job->header.set_state(v1::JOB_STATE_UNSPECIFIED);
    std::vector<int> queued;
    {
      std::lock_guard<std::mutex> lock(job->mu);
      SetJobStateLocked(*job, state);
      job->finished = IsTerminal(state);
      for (size_t i = 0; i < stored.documents.size(); ++i) {
        DocRuntime d;
        d.status = std::move(stored.documents[i]);
        d.max_tokens_read = d.status.tokens_read();
        d.last_worker = d.status.worker();
        const v1::DocumentState ds = d.status.state();
        d.status.set_state(v1::DOCUMENT_STATE_UNSPECIFIED);
        job->docs.push_back(std::move(d));
        SetDocStateLocked(*job, static_cast<int>(i), ds);
      }
      if (!job->finished && job->header.has_deadline() &&
          ToTime(job->header.deadline()) <= absl::Now()) {
        ++resumed;
        ExpireLocked(*job);  // its deadline passed while the coordinator was down
      } else if (!job->finished) {
        ++resumed;
        std::vector<int> changed;
        for (size_t i = 0; i < job->docs.size(); ++i) {
          const v1::DocumentState ds = job->docs[i].status.state();
          if (IsTerminal(ds)) continue;
          if (job->header.cancel_requested()) {
            FinishDocLocked(*job, static_cast<int>(i), v1::DOCUMENT_STATE_CANCELLED, "", 1);
            continue;
          }
          if (ds == v1::DOCUMENT_STATE_RUNNING) {
            SetDocStateLocked(*job, static_cast<int>(i), v1::DOCUMENT_STATE_QUEUED);
            changed.push_back(static_cast<int>(i));
          }
          queued.push_back(static_cast<int>(i));
        }
        if (!changed.empty()) PersistLocked(*job, changed);
        MaybeFinishJobLocked(*job);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_[id] = job;
      for (int i : queued) queue_.emplace_back(id, i);
      requeued += static_cast<int>(queued.size());
    }
    if (!job->finished && job->header.has_deadline()) {
      WatchDeadline(id, ToTime(job->header.deadline()));
    }
  }
  Log(LogLevel::kInfo, "recovered",
      {{"jobs", std::to_string(jobs->size())},
       {"unfinished_jobs", std::to_string(resumed)},
       {"requeued_documents", std::to_string(requeued)}});
  return absl::OkStatus();
}

void Coordinator::Start() {
  dispatcher_ = std::thread([this] { DispatchLoop(); });
  deadline_thread_ = std::thread([this] { DeadlineLoop(); });
  gauges_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      UpdateGauges();
      lock.lock();
      cv_.wait_for(lock, std::chrono::seconds(2), [this] { return stop_; });
    }
  });
}

void Coordinator::UpdateGauges() {
  const WorkerPool::Counts c = pool_->counts();
  metrics_->workers_healthy->Set(c.healthy);
  metrics_->workers_unhealthy->Set(c.unhealthy);
  metrics_->base->rocksdb_size_bytes().Set(static_cast<double>(store_->SizeBytes()));
}

void Coordinator::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
    for (const auto& run : runs_) run->context.TryCancel();
  }
  cv_.notify_all();
  if (dispatcher_.joinable()) dispatcher_.join();
  if (deadline_thread_.joinable()) deadline_thread_.join();
  if (gauges_.joinable()) gauges_.join();
  std::unique_lock<std::mutex> lock(mu_);
  runs_cv_.wait(lock, [this] { return active_runs_ == 0; });
}

void Coordinator::DispatchLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (queue_.empty()) {
      cv_.wait_for(lock, std::chrono::seconds(1));
      continue;
    }
    auto [job_id, index] = queue_.front();
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      queue_.pop_front();
      continue;
    }
    std::shared_ptr<JobRuntime> job = it->second;
    std::string avoid;
    int64_t tokens = 0;  // left to read (a resumed document starts near its last progress)
    {
      std::lock_guard<std::mutex> job_lock(job->mu);
      const DocRuntime& d = job->docs[index];
      if (d.status.state() != v1::DOCUMENT_STATE_QUEUED) {
        queue_.pop_front();
        continue;
      }
      avoid = d.last_worker;
      tokens = std::max<int64_t>(0, d.status.total_tokens() - d.status.tokens_read());
    }
    std::shared_ptr<Worker> worker = pool_->Acquire(avoid, tokens);
    if (worker == nullptr) {
      cv_.wait_for(lock, std::chrono::milliseconds(500));
      continue;
    }
    queue_.pop_front();
    auto run = std::make_shared<DocumentRun>();
    run->placed_tokens = tokens;
    {
      std::lock_guard<std::mutex> job_lock(job->mu);
      DocRuntime& d = job->docs[index];
      if (d.status.state() != v1::DOCUMENT_STATE_QUEUED || job->header.cancel_requested()) {
        lock.unlock();
        pool_->Release(worker, tokens);
        lock.lock();
        continue;
      }
      auto checkpoint = store_->GetCheckpoint(job_id, index);
      const int64_t resume = checkpoint.ok() ? checkpoint->document_tokens : 0;
      v1::DocumentStats* stats = d.status.mutable_stats();
      stats->set_attempts(stats->attempts() + 1);
      if (stats->attempts() > 1) {
        const int64_t reread = std::max<int64_t>(0, d.max_tokens_read - resume);
        stats->set_tokens_reread(stats->tokens_reread() + reread);
        Log(LogLevel::kInfo, "document_resumed",
            {{"job", job_id},
             {"document", std::to_string(index)},
             {"worker", worker->address},
             {"attempt", std::to_string(stats->attempts())},
             {"resume_from_tokens", std::to_string(resume)},
             {"tokens_read_before", std::to_string(d.max_tokens_read)},
             {"tokens_reread", std::to_string(reread)}});
      }
      SetDocStateLocked(*job, index, v1::DOCUMENT_STATE_RUNNING);
      d.status.set_worker(worker->address);
      d.status.set_tokens_read(resume);
      d.attempt_answer = d.status.answer();  // the worker skips what was streamed
      d.last_worker = worker->address;
      d.run = run;
      if (job->header.state() == v1::JOB_STATE_QUEUED) {
        SetJobStateLocked(*job, v1::JOB_STATE_RUNNING);
      }
      v1::JobEvent e;
      v1::DocumentAssigned* a = e.mutable_assigned();
      a->set_document_index(index);
      a->set_worker(worker->address);
      a->set_resume_from_tokens(resume);
      a->set_attempt(stats->attempts());
      EmitLocked(*job, std::move(e), {index}, /*sync=*/true);
    }
    ++active_runs_;
    runs_.insert(run);
    std::thread([this, job, index, worker, run] { RunDocument(job, index, worker, run); }).detach();
  }
}

}  // namespace longread::coordinator
